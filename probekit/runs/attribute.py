"""The attribute stage of a run (``probekit attribute RUN_DIR``), under a memory budget.

Every saved head of ``RUN/probes`` is attributed on the run's test split: its own layer weights,
its ablation sensitivity, its predictions and (AILA) its layer-to-layer map. The test rows are
read from the memory-mapped cache (:class:`~probekit.estimator.rows.CacheRows`, pages handed back
after every block) a chunk at a time, every head runs on each chunk, and each chunk's per-sample
outputs go straight to disk; the chunks follow the run's budget (``memory_budget``, or
``--memory-budget``; default half the available RAM), whatever the size of the cache.

The outputs are per sample and per layer -- ``(N, L)``, and ``(N, L, L)`` for a layer map --
small next to the ``(N, L, P, D)`` features they come from, and they are written as they come.
What the stage holds besides one chunk is ``O(N)`` per head: the test labels or targets and the
per-sample agreement (for its median); dataset-level numbers are running sums. ``"mean"``
ablation uses the estimator's stored train mean, and ``"shuffle"`` draws the same seeded
permutations of the ``N`` test samples as :func:`~probekit.attribution.ablation_sensitivity`
(kept in a scratch file) and gathers the permuted rows from the cache, so the result equals an
attribution of the whole test split in memory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._utils.memory import default_budget, parse_size
from ..analysis.attribution import (
    ablated_inputs,
    attribution_agreement,
    head_forward,
    is_regression_head,
    layer_attribution,
    layer_map,
    layer_mask,
    shuffle_orders,
    stored_mean,
    true_class,
)
from ..cache import FeatureCache, cache_subset
from ..cache.rows import CacheRows, stream_stats
from ..errors import ConfigError
from ..estimator import ProbeClassifier, ProbeRegressor
from ..estimator.inputs import check_finite
from .config import ABLATIONS
from .folder import cache_targets, read_config, read_split

__all__ = ["attribute_stage"]

_SAFETENSORS = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int64): "I64"}


def attribute_stage(
    run_dir: str | Path, ablation: str | None = None, seed: int = 0, memory_budget: Any = None
) -> dict[str, Any]:
    """Per-sample layer attribution of every saved head on the test split.

    Writes ``attribution/<head>.safetensors`` (``layer_weights`` (N, L) and ``agreement`` (N,)
    when the head has weights, ``ablation`` (N, L), ``accuracy_drop`` (L,), ``predictions``
    (N,), ``targets`` (N,) for regression, ``layer_map`` (N, L, L) for AILA) and
    ``attribution/attribution.json`` (mean profiles, agreement between weights and ablation).

    The test rows are read from the cache in chunks that fit the memory budget, and the
    outputs are written chunk by chunk (see the module docstring): a cache bigger than RAM is
    attributed as well as it is fitted out of core.

    Args:
        run_dir: the run folder (``config.json``, ``split.json``, ``probes/``).
        ablation: ``"mean"``, ``"zero"`` or ``"shuffle"`` (default: the run's).
        seed: seed of the ``"shuffle"`` permutations.
        memory_budget: the budget, e.g. ``"512MB"`` (default: the run's ``memory_budget``, else
            half the available RAM).

    Raises:
        ConfigError: an unknown ablation mode or a bad memory size.
        DataError: NaN or infinite test features.
    """
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)
    mode = ablation or cfg.ablation
    if mode not in ABLATIONS:
        raise ConfigError(f"ablation must be one of {', '.join(ABLATIONS)}, got {mode!r}")
    size = memory_budget if memory_budget is not None else cfg.memory_budget
    budget = parse_size(size, "memory_budget") if size is not None else default_budget()
    cache = FeatureCache.open(cfg.cache_dir)
    test = np.asarray(read_split(run_dir)["test"], dtype=np.int64)
    subset = cache_subset(cache, test)
    regression = cfg.task == "regression"
    estimator = ProbeRegressor if regression else ProbeClassifier
    y = (cache_targets(cache, cfg.cache_dir)[0] if regression else np.asarray(cache.labels))[test]
    out_dir = run_dir / "attribution"
    out_dir.mkdir(exist_ok=True)
    sel, pools = cache.select(None, cache.poolings)
    rows = CacheRows(subset, sel, pools)  # the stage's input: every layer, every pooling
    chunk = int(max(1, budget // (8 * rows.row_bytes)))
    heads: list[_HeadAttribution] = []
    try:
        for head_dir in sorted((run_dir / "probes").iterdir()):
            clf = estimator.load(head_dir)
            heads.append(
                _HeadAttribution(clf, head_dir.name, subset, y, mode, seed, budget, out_dir)
            )
        for start in range(0, len(test), chunk):
            idx = np.arange(start, min(start + chunk, len(test)))
            x = rows.gather(idx)  # (b, L * P, D): these rows of the whole-cache features
            check_finite(x, "the test split's features", offset=start)
            for head in heads:
                head.add(idx, x)
            del x
        summary = {
            "mode": mode,
            "test": test.tolist(),
            "heads": {h.name: h.finish() for h in heads},
        }
    finally:
        rows.close()
        for head in heads:
            head.close()
    (out_dir / "attribution.json").write_text(json.dumps(summary, indent=2))
    return summary


class _HeadAttribution:
    """One head's attribution, fed chunk by chunk (:meth:`add`), written as it goes.

    Args:
        clf: the fitted estimator.
        name: the head's folder name.
        subset: the test split of the cache (``N`` samples).
        y: ``(N,)`` test labels (classes) or targets (regression).
        mode: the ablation's replacement.
        seed: seed of the ``"shuffle"`` permutations.
        budget: bytes; an ablated batch (``L`` copies of its samples) takes about 1/8 of it.
        out_dir: where ``<name>.safetensors`` goes.
    """

    def __init__(
        self,
        clf: Any,
        name: str,
        subset: Any,
        y: np.ndarray,
        mode: str,
        seed: int,
        budget: int,
        out_dir: Path,
    ) -> None:
        self.clf, self.name, self.mode = clf, name, mode
        self.n = n = len(subset)
        self.y = y
        self.regression = is_regression_head(clf)
        self.n_layers = n_layers = int(clf.n_layers_)
        self.per = per = int(clf.tokens_per_layer_)
        n_tokens, dim = n_layers * per, max(clf.dims_)
        info = clf._cache_layout(subset)  # the head's own layers of the cache
        self.rows = CacheRows(subset, info["sel"], info["pools"])
        self.mask = layer_mask(n_layers, per)[None, :, :, None]  # (1, L, T, 1)
        self.forward, self.device = head_forward(clf)
        self.inner = int(max(1, budget // (8 * n_layers * n_tokens * dim * 4)))
        if self.regression:
            self.target = torch.as_tensor(np.asarray(y, dtype=np.float64).reshape(n, -1))
            k = self.target.shape[1]
            self.sse = torch.zeros(k, dtype=torch.float64)  # unablated squared error per target
            self.sse_abl = torch.zeros(n_layers, k, dtype=torch.float64)
        else:
            from ..estimator.fitted import class_index

            self.target = torch.as_tensor(class_index(clf, y, n))
            self.hits = 0
            self.hits_abl = torch.zeros(n_layers, dtype=torch.int64)
        self.perms: _Permutations | None = None
        self.fill: torch.Tensor | None = None
        if mode == "shuffle":
            self.perms = _Permutations(n, n_layers, seed, out_dir / f".{name}.permutations")
        elif mode == "zero":
            self.fill = torch.zeros(n_tokens, dim)
        else:  # the train mean the estimator stored (saved heads always have it)
            self.fill = stored_mean(clf, n_tokens, dim)
            if self.fill is None:  # else the test rows' mean, zero-padded as the input is
                mean = stream_stats(self.rows, 256)[0].float()
                self.fill = torch.zeros(n_tokens, dim)
                self.fill[:, : mean.shape[1]] = mean
        self.file = _RowFile(
            out_dir / f"{name}.safetensors", n, {"accuracy_drop": ((n_layers,), np.float32)}
        )
        self.sums: dict[str, np.ndarray] = {}
        self.has: dict[str, bool] = {}
        self.agreement: np.ndarray | None = None  # (N,) float64 when the head has weights

    def _maybe(self, key: str, fn: Any, x: torch.Tensor) -> np.ndarray | None:
        """``fn(clf, x)``, or None when the head has no such output (decided on the first
        chunk: the functions raise ValueError)."""
        if self.has.get(key, True):
            try:
                out = fn(self.clf, x)
            except ValueError:
                out = None
            self.has[key] = out is not None
            return out
        return None

    def add(self, idx: np.ndarray, x: torch.Tensor) -> None:
        """Attribute the test samples ``idx`` (consecutive positions), whose features in the
        stage's layout (every layer and pooling of the cache) are ``x`` ``(b, L' * P', D')``."""
        start = int(idx[0])
        out: dict[str, np.ndarray] = {}
        abl = self._ablation(idx, x)
        out["ablation"] = abl.astype(np.float32)
        pred = np.asarray(self.clf.predict(x))
        out["predictions"] = pred.astype(np.float32 if self.regression else np.int64)
        if self.regression:
            out["targets"] = np.asarray(self.y[idx], dtype=np.float32)
        self._add_sum("ablation", abl)
        weights = self._maybe("layer_weights", layer_attribution, x)
        if weights is not None:
            agree = attribution_agreement(weights, abl)
            if self.agreement is None:
                self.agreement = np.empty(self.n)
            self.agreement[idx] = agree
            out["layer_weights"] = weights.astype(np.float32)
            out["agreement"] = agree.astype(np.float32)
            self._add_sum("layer_weights", weights)
        lmap = self._maybe("layer_map", layer_map, x)
        if lmap is not None:
            out["layer_map"] = lmap.astype(np.float32)
        self.file.write(start, out)

    def _add_sum(self, key: str, values: np.ndarray) -> None:
        """Running column sums, row after row as ``values.mean(0)`` over all rows adds them."""
        if key in self.sums:
            values = np.concatenate([self.sums[key][None], values])
        self.sums[key] = np.add.reduce(values, axis=0)

    def _ablation(self, idx: np.ndarray, x: torch.Tensor) -> np.ndarray:
        """Per-sample ablation ``(b, L)`` of the samples ``idx``; updates the running counts."""
        from ..estimator.fitted import inputs

        xb = inputs(self.clf, x)  # (b, T, D), the head's layout
        parts = []
        with torch.inference_mode():
            for s in range(0, len(idx), self.inner):
                pos = idx[s : s + self.inner]
                xi = xb[s : s + self.inner]
                p0, pa = ablated_inputs(
                    self.forward, xi, self._replacement(pos, xi), self.mask, self.device
                )
                tb = self.target[torch.from_numpy(pos)]
                if self.regression:
                    p0, pa = p0.double(), pa.double()
                    base_se = (p0 - tb).pow(2)  # (b, K)
                    abl_se = (pa - tb[:, None]).pow(2)  # (b, L, K)
                    self.sse += base_se.sum(0)
                    self.sse_abl += abl_se.sum(0)
                    parts.append((abl_se.sum(-1) - base_se.sum(-1)[:, None]).numpy())
                    continue
                base_p, abl_p, base_hit, abl_hit = true_class(p0, pa, tb)
                self.hits += int(base_hit.sum())
                self.hits_abl += abl_hit.sum(0)
                parts.append((base_p[:, None] - abl_p).numpy())
        return np.concatenate(parts)

    def _replacement(self, pos: np.ndarray, xi: torch.Tensor) -> torch.Tensor:
        """What replaces each layer of the samples ``pos``: ``(1, 1, T, D)`` (zero, mean) or
        ``(b, L, T, D)`` whose layer ``l`` tokens of copy ``l`` are layer ``l`` of the samples
        ``perms[l, pos]`` (shuffle), gathered from the cache."""
        if self.perms is None:
            assert self.fill is not None
            return self.fill[None, None]
        repl = torch.zeros((len(pos), self.n_layers) + tuple(xi.shape[1:]))
        for layer in range(self.n_layers):
            others = self.perms.take(layer, int(pos[0]), int(pos[-1]) + 1)
            tokens = slice(layer * self.per, (layer + 1) * self.per)
            part = self.rows.gather(others, layers=[layer])  # (b, P, D of the head's layers)
            repl[:, layer, tokens, : part.shape[-1]] = part  # zero-padded as the input is
        return repl

    def finish(self) -> dict[str, Any]:
        """Write the dataset-level tensors, close the file; the head's ``attribution.json``
        entry."""
        n = self.n
        if self.regression:
            y = self.target
            ss_tot = (y - y.mean(0)).pow(2).sum(0).clamp_min(1e-300)
            base_acc = float((1 - self.sse / ss_tot).mean(-1))
            drop = (base_acc - (1 - self.sse_abl / ss_tot).mean(-1)).numpy()
            units = "squared error"
        else:  # as a float32 mean of the hits over the samples
            base_acc = float(torch.tensor(float(self.hits)) / n)
            drop = (base_acc - self.hits_abl.float() / n).numpy()
            units = "probability"
        ablation_mean = self.sums["ablation"] / n
        entry: dict[str, Any] = {
            "ablation_mean": ablation_mean.tolist(),
            "accuracy_drop": np.asarray(drop).tolist(),
            "base_accuracy": base_acc,
            "units": units,
        }
        if self.has.get("layer_weights"):
            entry["weights_mean"] = (self.sums["layer_weights"] / n).tolist()
            assert self.agreement is not None  # filled with the weights
            entry["agreement_median"] = float(np.nanmedian(self.agreement))
        self.file.finish({"accuracy_drop": np.asarray(drop, dtype=np.float32)})
        return entry

    def close(self) -> None:
        """Release the cache rows and the scratch files (an unfinished output is removed)."""
        self.rows.close()
        self.file.abort()
        if self.perms is not None:
            self.perms.path.unlink(missing_ok=True)


class _Permutations:
    """The ``"shuffle"`` ablation's ``L`` permutations of the ``N`` test samples, drawn as
    :func:`~probekit.attribution.ablation_sensitivity` draws them, kept in a scratch file
    (``L * N`` int64) and read a slice at a time."""

    def __init__(self, n: int, n_layers: int, seed: int, path: Path) -> None:
        self.n, self.path = n, path
        with open(path, "wb") as f:
            for order in shuffle_orders(n, n_layers, seed):
                f.write(order.astype(np.int64).tobytes())

    def take(self, layer: int, start: int, stop: int) -> np.ndarray:
        """``perms[layer, start:stop]``."""
        return np.fromfile(
            self.path, dtype=np.int64, count=stop - start, offset=(layer * self.n + start) * 8
        )


class _RowFile:
    """A safetensors file written a block of rows at a time.

    The header (every tensor's dtype, shape and byte range) is written with the first block,
    whose arrays give the row tensors' names, dtypes and trailing shapes (their first dimension
    is ``n``); ``tail`` declares the tensors written at the end (``{name: (shape, dtype)}``).
    The file is ``PATH.part`` until :meth:`finish` renames it.
    """

    def __init__(self, path: Path, n: int, tail: dict[str, tuple[tuple[int, ...], Any]]) -> None:
        self.path, self.n, self.tail = path, n, tail
        self.part = path.with_name(f".{path.name}.part")
        self.f: Any = None
        self.offsets: dict[str, tuple[int, int, np.dtype]] = {}  # begin, row bytes, dtype

    def _open(self, first: dict[str, np.ndarray]) -> None:
        specs = {k: ((self.n,) + a.shape[1:], a.dtype) for k, a in first.items()}
        specs.update({k: (tuple(s), np.dtype(d)) for k, (s, d) in self.tail.items()})
        order = sorted(specs, key=lambda k: -specs[k][1].itemsize)  # 8-byte types aligned first
        header: dict[str, Any] = {}
        offset = 0
        for key in order:
            shape, dtype = specs[key]
            size = int(np.prod(shape)) * dtype.itemsize
            header[key] = {
                "dtype": _SAFETENSORS[dtype],
                "shape": list(shape),
                "data_offsets": [offset, offset + size],
            }
            row = size // shape[0] if shape and shape[0] else 0
            self.offsets[key] = (offset, row, dtype)
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self.f = open(self.part, "wb")
        self.f.write(len(blob).to_bytes(8, "little") + blob)
        self.base = 8 + len(blob)
        self.f.truncate(self.base + offset)

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Rows ``start:start + b`` of every row tensor (the same names on every call)."""
        if self.f is None:
            self._open(arrays)
        for key, a in arrays.items():
            begin, row, dtype = self.offsets[key]
            self.f.seek(self.base + begin + start * row)
            self.f.write(np.ascontiguousarray(a, dtype=dtype).tobytes())

    def finish(self, tail: dict[str, np.ndarray]) -> None:
        """Write the tail tensors and move the file into place."""
        for key, a in tail.items():
            begin, _, dtype = self.offsets[key]
            self.f.seek(self.base + begin)
            self.f.write(np.ascontiguousarray(a, dtype=dtype).tobytes())
        self.f.close()
        self.f = None
        os.replace(self.part, self.path)

    def abort(self) -> None:
        """Close and remove an unfinished file (nothing once :meth:`finish` ran)."""
        if self.f is not None:
            self.f.close()
            self.f = None
        self.part.unlink(missing_ok=True)
