"""Probe heads and their registry.

Every head is an ``nn.Module`` subclass of :class:`ProbeHead`, registered by name::

    @register_probe("laya")
    class LAYAHead(ProbeHead): ...

    head = create_probe("laya", n_layers=13, dims=384, n_classes=4, tau=1.5)
    out = head(x)  # x (B, T, D) -> ProbeOutput(logits (B, C), layer_weights (B, L), ...)

Registered names and classes (every head class ends in ``Head``): ``linear``
(:class:`LinearHead`), ``concat`` (:class:`ConcatHead`), ``scalar-mix`` (:class:`ScalarMixHead`),
``alf`` (:class:`ALFHead`), ``laya`` (:class:`LAYAHead`), ``kcla`` (:class:`KCLAHead`),
``aila-linear`` (:class:`AILALinearHead`), ``aila-attention`` (:class:`AILAAttentionHead`),
``diff-means`` (:class:`DiffMeansHead`, fitted in closed form).
Each head's docstring gives its math, its tensor shapes and the paper it follows.
"""

from __future__ import annotations

from .base import GroupLinear, ProbeHead, ProbeOutput
from .registry import create_probe, get_probe_class, head_params, list_probes, register_probe

__all__ = [
    "AILAAttentionHead",
    "AILALinearHead",
    "ALFHead",
    "ConcatHead",
    "DiffMeansHead",
    "GroupLinear",
    "KCLAHead",
    "LAYAHead",
    "LinearHead",
    "ScalarMixHead",
    "ProbeHead",
    "ProbeOutput",
    "check_probe",
    "create_probe",
    "get_probe_class",
    "head_params",
    "list_probes",
    "register_probe",
]

# Importing the head modules registers them.
from . import aila, alf, diffmeans, kcla, laya, linear  # noqa: F401
from .aila import AILAAttentionHead, AILALinearHead
from .alf import ALFHead
from .check import check_probe
from .diffmeans import DiffMeansHead
from .kcla import KCLAHead
from .laya import LAYAHead
from .linear import ConcatHead, LinearHead, ScalarMixHead
