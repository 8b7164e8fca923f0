"""Training a :class:`~probekit.estimator.ProbeClassifier` from a cache streamed in batches,
for features that do not fit in memory: one configuration, fixed epochs, no validation split.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from ..probes import create_probe, get_probe_class
from ..train import TrainConfig, train_stream
from .inputs import encode_labels
from .model import FeatureNorm, _buffer, _stream_stats

if TYPE_CHECKING:  # pragma: no cover
    from .classifier import ProbeClassifier

__all__ = ["fit_from_stream"]


def fit_from_stream(
    clf: ProbeClassifier,
    cache: Any,
    y: Any,
    s: TrainConfig,
    variants: list[dict[str, Any]],
    seed: int,
    device: torch.device,
) -> ProbeClassifier:
    """Train ``clf`` from ``cache.batches`` (one config, fixed epochs, no validation)."""
    info = clf._cache_layout(cache)
    clf.classes_, y_idx = encode_labels(y, len(cache))
    clf._set_layout(info, None)
    clf.device_ = device
    n_tokens, dim = clf.n_layers_ * clf.tokens_per_layer_, max(clf.dims_)
    mode = get_probe_class(clf.head).input_norm
    norm = FeatureNorm(mode, n_tokens, dim)
    stats = _stream_stats(
        lambda: cache.batches(8192, layers=info["sel"], pooling=info["pools"]), n_tokens, dim
    )
    if not math.isfinite(float(stats[0].sum() + stats[1].sum())):
        raise DataError("the cache contains NaN or infinity")
    if mode == "standardize":
        norm.mean.copy_(stats[0].float())
        norm.std.copy_(
            torch.where(stats[1] > 1e-12, stats[1], torch.ones_like(stats[1])).float()
        )
    norm = norm.to(device)
    cfg = clf._train_config(s, seed, device)
    if cfg.solver == "lbfgs":  # L-BFGS needs every sample at once: stream with AdamW
        cfg = dataclasses.replace(cfg, solver="adamw")
    classes_t = (
        torch.as_tensor(clf.classes_, device=device)
        if clf.classes_.dtype.kind in "iu"
        else None
    )
    epoch = itertools.count()

    def batches() -> Iterator[tuple[Tensor, Tensor]]:
        it = cache.batches(
            cfg.batch_size,
            layers=info["sel"],
            pooling=info["pools"],
            shuffle=True,
            seed=seed + next(epoch),
        )
        for xb, yb in it:
            yb = yb.to(device)
            yield xb, (torch.searchsorted(classes_t, yb) if classes_t is not None else yb)

    variant = variants[0]
    result = train_stream(
        lambda **v: create_probe(clf.head, **clf._head_kwargs(v)),
        batches,
        len(cache),
        len(clf.classes_),
        np.bincount(y_idx, minlength=len(clf.classes_)).tolist(),
        cfg,
        transform=norm,
        variant=variant,
    )
    head = create_probe(clf.head, **clf._head_kwargs(variant))
    head.load_state_dict(result.state_dict)
    clf._record(result)
    if hasattr(head, "selected_layer"):
        clf.selected_layer_ = int(_buffer(head, "selected_layer"))
    clf._finish(norm.cpu(), head, dict(variant), stats[0].float())
    return clf

