"""Which modules are "the layers" of a model, and one meaning for ``layers=`` everywhere.

Index convention (ARCHITECTURE.md):

* Transformers (HF and timm ViTs): layer 0 is the embedding output (HF ``hidden_states[0]``;
  timm: tokens after patch embedding, position embedding and ``norm_pre``), layers 1..L are the
  block outputs (the residual stream). For HF models whose ``hidden_states[L]`` is taken after a
  final norm (GPT-2's ``ln_f``, Llama's ``norm``), layer L is that norm's output, so that
  recorded layer l always equals ``output_hidden_states[l]``.
* CNNs (timm): their stages, as ``model.feature_info`` names them.

Selections follow timm's ``feature_take_indices``: ``None`` = all, an int n = the last n, a list
of ints = those indices (negatives count from the end). Strings select modules by name or glob
(``"blocks.*.norm2"``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["LayerSpec", "resolve_indices", "select_layers", "glob_modules"]

Selection = int | str | Sequence[int | str] | None


@dataclass(frozen=True)
class LayerSpec:
    """One recordable point of a model.

    Attributes:
        name: the name used in caches and figures (``"layers.3"``, ``"stages.2"``, or a module
            name such as ``"blocks.1.norm2"``).
        module: dotted path of the module to hook.
        io: ``"output"`` records what the module returns, ``"input"`` what it is called with
            (layer 0 of a transformer is the input of its first block).
        dim: channel width, when known before a forward pass.
    """

    name: str
    module: str
    io: str = "output"
    dim: int | None = None


def resolve_indices(selection: Any, n: int, names: Sequence[str] | None = None) -> list[int]:
    """Resolve a ``layers=`` selection to positions in ``range(n)``, timm style.

    Args:
        selection: ``None`` (all), an int ``k`` (the last ``k``), a list/tuple of ints (negatives
            count from the end) and/or names (glob patterns like ``"blocks.*"`` allowed), or a
            single name.
        n: number of recorded layers.
        names: the ``n`` layer names, for name selection.

    Returns:
        The positions, in the order given (a glob expands in recorded order).

    Raises:
        ValueError: an int ``k`` outside ``1..n``, an unknown name, an empty selection.
        IndexError: a list index outside ``-n..n-1``.
        TypeError: anything else.
    """
    if selection is None:
        return list(range(n))
    if isinstance(selection, (int, np.integer)) and not isinstance(selection, bool):
        k = int(selection)
        if not 1 <= k <= n:
            raise ValueError(
                f"layers={k} asks for the last {k} layers; valid: 1..{n} "
                f"(or a list of indices in -{n}..{n - 1}, or names)"
            )
        return list(range(n - k, n))
    if isinstance(selection, str):
        selection = [selection]
    if isinstance(selection, (torch.Tensor, np.ndarray)):
        selection = selection.tolist()
    if not isinstance(selection, (list, tuple, range)):
        raise TypeError(
            f"layers must be None, an int, a name, or a list of indices/names; "
            f"got {type(selection).__name__}"
        )
    out: list[int] = []
    for item in selection:
        if isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            j = int(item)
            if not -n <= j < n:
                raise IndexError(
                    f"layer index {j} out of range for {n} layers (valid: -{n}..{n - 1})"
                )
            out.append(j % n)
        elif isinstance(item, str):
            known = list(names or [])
            if item in known:
                out.append(known.index(item))
            elif any(ch in item for ch in "*?["):
                regex = _glob_regex(item)
                hits = [j for j, nm in enumerate(known) if regex.fullmatch(nm)]
                if not hits:
                    raise ValueError(f"layer pattern {item!r} matches none of {known}")
                out.extend(hits)
            else:
                raise ValueError(f"unknown layer {item!r}; recorded layers: {known}")
        else:
            raise TypeError(f"layer selections are ints or names, got {item!r}")
    if not out:
        raise ValueError("empty layer selection")
    return out


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` matches within one dotted part, ``**`` across parts, ``?`` one character."""
    out = []
    for token in re.split(r"(\*\*|\*|\?)", pattern):
        out.append({"**": ".*", "*": "[^.]*", "?": "[^.]"}.get(token, re.escape(token)))
    return re.compile("".join(out))


def glob_modules(model: nn.Module, pattern: str) -> list[str]:
    """Names of the modules of ``model`` matching ``pattern``, in model order.

    ``pattern`` is an exact module name or a glob where ``*`` stays within one dotted part
    (``"blocks.*.norm2"`` matches ``blocks.3.norm2``, not ``blocks.3.attn.norm2``) and ``**``
    crosses parts.
    """
    names = [n for n, _ in model.named_modules() if n]
    if pattern in names:
        return [pattern]
    regex = _glob_regex(pattern)
    return [n for n in names if regex.fullmatch(n)]


def select_layers(model: nn.Module, layers: Sequence[LayerSpec], selection: Selection) -> list[LayerSpec]:
    """Pick the layers to record.

    Args:
        model: the model, for module-name selections.
        layers: the model's canonical layers (index 0..L).
        selection: ``None``, an int, a list of ints and/or layer names, or a module name / glob
            (``"blocks.*.norm2"``), which records those modules' outputs.

    Returns:
        The chosen layers, canonical layers first in index order, then named modules in model order.

    Raises:
        IndexError: an index out of range. ValueError: a name or glob matching no module.
    """
    if selection is None or isinstance(selection, int):
        return [layers[i] for i in resolve_indices(selection, len(layers))]
    if isinstance(selection, str):
        selection = [selection]
    ints = [s for s in selection if not isinstance(s, str)]
    names = [s for s in selection if isinstance(s, str)]
    chosen = [layers[i] for i in resolve_indices(ints, len(layers))] if ints else []
    by_name = {spec.name: spec for spec in layers}
    for pattern in names:
        if pattern.lstrip("-").isdigit():
            chosen.append(layers[resolve_indices([int(pattern)], len(layers))[0]])
        elif pattern in by_name:
            chosen.append(by_name[pattern])
        else:
            matches = glob_modules(model, pattern)
            if not matches:
                raise ValueError(
                    f"no module matches {pattern!r}; layers are {layers[0].name}..{layers[-1].name}, "
                    "or give a module name such as "
                    f"{next((n for n, _ in model.named_modules() if n.count('.') == 2), 'blocks.0.norm1')!r}"
                )
            chosen.extend(LayerSpec(name=m, module=m) for m in matches)
    seen: set[str] = set()
    return [s for s in chosen if not (s.name in seen or seen.add(s.name))]
