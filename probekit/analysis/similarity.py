"""Layer similarity within one model and across two: linear CKA (biased or debiased) and RSA.

::

    S = probekit.similarity(cache)                        # (L, L) linear CKA between its layers
    S = probekit.similarity(cache_a, cache_b)             # (L_a, L_b), same samples required
    S = probekit.similarity(cache, method="cka-debiased")
    S = probekit.similarity(cache, method="rsa", distance="correlation", max_samples=1000)

Linear CKA (Kornblith et al., 2019) between layers ``X (N, D_x)`` and ``Y (N, D_y)`` is
``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with linear kernels ``K = X X^T``, ``L = Y Y^T``.

* ``"cka"``: the biased estimator ``HSIC_0 = ||X_c^T Y_c||_F^2 / (N - 1)^2`` (``X_c`` centred).
* ``"cka-debiased"``: the unbiased HSIC estimator of Song et al. (2012), as used for CKA by
  Nguyen et al. (2021)::

      HSIC_1 = [tr(K~ L~) + (1^T K~ 1)(1^T L~ 1) / ((N-1)(N-2)) - 2/(N-2) 1^T K~ L~ 1] / (N (N-3))

  where ``K~`` is ``K`` with its diagonal set to zero. With linear kernels every term is a sum
  over samples of quantities of ``D``-sized vectors (``tr(K~ L~) = ||X^T Y||_F^2 -
  sum_i |x_i|^2 |y_i|^2``, ``K~ 1 = X s_x - |x_i|^2`` with ``s_x = sum_i x_i``, ...), so it is
  accumulated in the same single pass as the biased one. The estimator is invariant to
  translating ``X`` or ``Y``; features are shifted by the first batch's mean before
  accumulation to keep the float64 sums well conditioned.

Both are computed in streaming form: one pass over minibatches accumulates, in float64,
the cross-products ``X^T Y`` for the layer pairs of a "pass", plus a few ``D``-sized sums; an
``N x N`` matrix is never formed. Memory: ``8 * D_x * D_y`` bytes per layer pair, plus one
batch. All ``L_a x L_b`` pairs share one pass while their cross-products fit in ``memory_budget``
bytes (default 1 GiB); otherwise the layers are split into groups and the data is read once per
pair of groups (a pair of layers wider than the budget still gets its own pass).

RSA (Kriegeskorte et al., 2008) compares representational dissimilarity matrices (RDMs,
``N x N``): the Spearman correlation between the upper triangles of the two layers' RDMs, with
``"cosine"`` or ``"correlation"`` distance between samples. Because RDMs are quadratic in ``N``,
at most ``max_samples`` samples (default 1000, drawn without replacement with ``seed``, the same
ones for both inputs) are used; memory is ``4 * (L_a + L_b) * M`` bytes with
``M = n (n - 1) / 2``.

Inputs are feature caches (:class:`~probekit.cache.FeatureCache`) or arrays ``(N, L, D)``
(array, tensor, or a list of ``L`` per-layer ``(N, D_l)`` arrays); a ``(N, D)`` array is one
layer. A layer recorded with several poolings is compared as the concatenation of its pooled
vectors. Two inputs must describe the same samples in the same order: two caches are compared
by their datasets' fingerprints and sample positions (and labels), arrays by their length; a
mismatch raises :class:`~probekit.errors.DataError`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from ..models.layers import resolve_indices

__all__ = ["METHODS", "DISTANCES", "similarity", "linear_cka_pairs"]

METHODS = ("cka", "cka-debiased", "rsa")
DISTANCES = ("cosine", "correlation")

_F64 = torch.float64


# ----------------------------------------------------------------------------- sources


def _is_cache(x: Any) -> bool:
    return hasattr(x, "batches") and hasattr(x, "layer_names") and hasattr(x, "manifest")


class _Source:
    """One input, seen as ``L`` selected layers of widths ``dims``, read in row batches."""

    def __init__(self, data: Any, layers: Any, pooling: Any, name: str) -> None:
        self.name = name
        self.cache = data if _is_cache(data) else None
        if self.cache is not None:
            c = self.cache
            if pooling is None:
                pools = ["cls"] if "cls" in c.poolings else list(c.poolings)
            else:
                pools = pooling.split("+") if isinstance(pooling, str) else list(pooling)
            bad = [p for p in pools if p not in c.poolings]
            if not pools or bad:
                raise ConfigError(
                    f"{name}: pooling {pooling!r} was not recorded; recorded poolings: {c.poolings}"
                )
            self.pools = pools
            self.sel = _resolve(layers, len(c.layer_names), c.layer_names, name)
            self.names = [str(c.layer_names[j]) for j in self.sel]
            self.layer_dims = [int(c.dims[j]) for j in self.sel]
            self.n = len(c)
            self.arrays: list[Tensor] | None = None
        else:
            arrays = _as_layer_arrays(data, name)
            self.sel = _resolve(layers, len(arrays), None, name)
            self.arrays = [arrays[j] for j in self.sel]
            self.names = [f"layer {j}" for j in self.sel]
            self.layer_dims = [int(a.shape[1]) for a in self.arrays]
            self.pools = ["array"]
            self.n = int(self.arrays[0].shape[0])
        self.dims = [d * len(self.pools) for d in self.layer_dims]

    def batches(self, batch_size: int, local: Sequence[int]) -> Iterator[list[Tensor]]:
        """Yield, per batch, the float64 features ``(b, dims[k])`` of the layers ``local``."""
        if self.arrays is not None:
            for start in range(0, self.n, batch_size):
                yield [self.arrays[k][start : start + batch_size].to(_F64) for k in local]
            return
        assert self.cache is not None
        chosen = [self.sel[k] for k in local]
        p = len(self.pools)
        batches = self.cache.batches(batch_size, layers=chosen, pooling=self.pools, flat=True)
        for xb, _ in batches:  # (b, L' * P, D)
            out = []
            for i, k in enumerate(local):
                d = self.layer_dims[k]
                out.append(xb[:, i * p : (i + 1) * p, :d].reshape(xb.shape[0], p * d).to(_F64))
            yield out

    def rows(self, idx: np.ndarray, batch_size: int) -> list[Tensor]:
        """Every selected layer at the sample positions ``idx`` (sorted): ``L`` x ``(n, dims)``."""
        if self.arrays is not None:
            t = torch.from_numpy(idx)
            return [a[t].to(_F64) for a in self.arrays]
        parts: list[list[Tensor]] = [[] for _ in self.sel]
        start = 0
        for feats in self.batches(batch_size, range(len(self.sel))):
            b = feats[0].shape[0]
            lo, hi = np.searchsorted(idx, [start, start + b])
            if hi > lo:
                take = torch.from_numpy(idx[lo:hi] - start)
                for k, f in enumerate(feats):
                    parts[k].append(f[take])
            start += b
        return [torch.cat(p) for p in parts]


def _resolve(layers: Any, n: int, names: Sequence[str] | None, who: str) -> list[int]:
    try:
        return resolve_indices(layers, n, names)
    except (ValueError, IndexError, TypeError) as e:
        raise ConfigError(f"{who}: bad layers={layers!r}: {e}") from e


def _as_layer_arrays(data: Any, who: str) -> list[Tensor]:
    """``(N, L, P, D)`` / ``(N, L, D)`` / ``(N, D)`` array or tensor, or a list of ``(N, D_l)``:
    ``L`` tensors (``(N, P * D)`` for a 4-D input)."""
    if isinstance(data, (list, tuple)):
        arrays = [torch.as_tensor(np.asarray(a) if not isinstance(a, Tensor) else a) for a in data]
        if not arrays or any(a.ndim != 2 for a in arrays):
            raise DataError(f"{who}: a list of layers must hold (N, D_l) arrays")
        if len({a.shape[0] for a in arrays}) != 1:
            raise DataError(f"{who}: the layers have different numbers of samples")
    else:
        t = data if isinstance(data, Tensor) else torch.as_tensor(np.asarray(data))
        if t.ndim == 2:
            t = t[:, None, :]
        if t.ndim == 4:  # (N, L, P, D): a layer's P poolings concatenated, as for a cache
            t = t.flatten(2)
        if t.ndim != 3:
            raise DataError(
                f"{who}: features must be a cache, (N, L, P, D), (N, L, D), (N, D) or a list "
                f"of (N, D_l); got shape {tuple(t.shape)}"
            )
        arrays = list(t.unbind(1))
    arrays = [a.detach().cpu() for a in arrays]
    for a in arrays:
        if not a.is_floating_point():
            raise DataError(f"{who}: features must be floating point, got {a.dtype}")
        if not torch.isfinite(a).all():
            raise DataError(f"{who}: features contain NaN or infinity")
    return arrays


def check_same_samples(a: Any, b: Any) -> None:
    """Raise :class:`DataError` unless two inputs hold the same samples in the same order.

    Caches: equal dataset fingerprints (when both manifests record one), equal sample positions
    (``index``) and labels. Arrays: equal length.
    """
    na, nb = len(a.labels) if _is_cache(a) else None, len(b.labels) if _is_cache(b) else None
    if na is not None and nb is not None:
        da = a.manifest.get("dataset") or {}
        db = b.manifest.get("dataset") or {}
        fa, fb = da.get("fingerprint"), db.get("fingerprint")
        if fa and fb and fa != fb:
            raise DataError(
                f"the caches were made on different datasets ({da.get('name')!r} "
                f"{str(fa)[:12]} vs {db.get('name')!r} {str(fb)[:12]}); similarity needs the "
                "same samples in both"
            )
        if na != nb:
            raise DataError(f"the caches hold {na} and {nb} samples; they must hold the same ones")
        if not np.array_equal(a.index, b.index) or not np.array_equal(a.labels, b.labels):
            raise DataError(
                "the caches hold different samples (sample positions or labels differ); "
                "similarity needs the same samples in the same order"
            )
        ta, tb = getattr(a, "texts", None), getattr(b, "texts", None)
        if ta is not None and tb is not None and list(ta) != list(tb):
            raise DataError("the caches hold different input texts; they must hold the same ones")


# ----------------------------------------------------------------------------- CKA


class _PairStats:
    """Streaming sufficient statistics of linear (debiased) HSIC for a group pair.

    ``X`` is the concatenation of the group's A-layers ``(b, DA)``, ``Y`` of its B-layers
    ``(b, DB)``; both are shifted by a fixed vector before they arrive here. ``symmetric``: ``X``
    and ``Y`` are the same layers (a diagonal group pair of one input), so only the blocks of
    ``X^T Y`` on and above the layer diagonal are accumulated (half the products); :meth:`hsic`
    then answers for ``i <= j``.
    """

    def __init__(
        self, da: list[int], db: list[int], device: torch.device, symmetric: bool = False
    ) -> None:
        self.symmetric = symmetric
        self.oa = np.concatenate([[0], np.cumsum(da)]).tolist()
        self.ob = np.concatenate([[0], np.cumsum(db)]).tolist()
        z = lambda *s: torch.zeros(*s, dtype=_F64, device=device)  # noqa: E731
        self.n = 0
        self.C = z(self.oa[-1], self.ob[-1])  # X^T Y
        self.sa, self.sb = z(self.oa[-1]), z(self.ob[-1])  # sum x, sum y
        self.ua = z(self.oa[-1], len(db))  # sum_i |y_i|^2 x_i   per B-layer
        self.ub = z(self.ob[-1], len(da))  # sum_i |x_i|^2 y_i   per A-layer
        self.nn = z(len(da), len(db))  # sum_i |x_i|^2 |y_i|^2
        self.qa, self.qb = z(len(da)), z(len(db))  # sum_i |x_i|^2, sum_i |y_i|^2

    @staticmethod
    def _sq_norms(x: Tensor, offsets: list[int]) -> Tensor:
        return torch.stack(
            [x[:, offsets[k] : offsets[k + 1]].square().sum(1) for k in range(len(offsets) - 1)],
            1,
        )

    def update(self, x: Tensor, y: Tensor) -> None:
        self.n += x.shape[0]
        if self.symmetric:  # y is x: the upper block triangle of x^T x, each sum once
            na = self._sq_norms(x, self.oa)  # (b, LA)
            for i in range(len(self.oa) - 1):
                a0, a1 = self.oa[i], self.oa[i + 1]
                self.C[a0:a1, a0:].addmm_(x[:, a0:a1].T, x[:, a0:])
            s, u, q = x.sum(0), x.T @ na, na.sum(0)
            self.sa += s
            self.sb += s
            self.ua += u
            self.ub += u
            self.nn += na.T @ na
            self.qa += q
            self.qb += q
            return
        na, nb = self._sq_norms(x, self.oa), self._sq_norms(y, self.ob)  # (b, LA), (b, LB)
        self.C.addmm_(x.T, y)  # no (DA, DB) temporary
        self.sa += x.sum(0)
        self.sb += y.sum(0)
        self.ua += x.T @ nb
        self.ub += y.T @ na
        self.nn += na.T @ nb
        self.qa += na.sum(0)
        self.qb += nb.sum(0)

    def hsic(self, i: int, j: int, debiased: bool) -> float:
        """HSIC of A-layer ``i`` and B-layer ``j`` of this group pair (without ``1/(N-1)^2``
        for the biased estimator: the factor cancels in CKA)."""
        if self.symmetric and i > j:
            raise ValueError("a symmetric pair holds HSIC for i <= j only")
        a0, a1, b0, b1 = self.oa[i], self.oa[i + 1], self.ob[j], self.ob[j + 1]
        n = self.n
        c = self.C[a0:a1, b0:b1]
        sa, sb = self.sa[a0:a1], self.sb[b0:b1]
        if not debiased:
            centred = c - torch.outer(sa, sb) / n
            return float(centred.square().sum())
        tr = c.square().sum() - self.nn[i, j]
        ka = sa.square().sum() - self.qa[i]
        kb = sb.square().sum() - self.qb[j]
        cross = sa @ c @ sb - sa @ self.ua[a0:a1, j] - sb @ self.ub[b0:b1, i] + self.nn[i, j]
        value = tr + ka * kb / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross
        return float(value / (n * (n - 3)))


def _groups(dims: Sequence[int], limit: float) -> list[list[int]]:
    """Consecutive layer indices packed so each group's total width is <= ``limit`` (>= 1)."""
    out: list[list[int]] = [[]]
    width = 0
    for k, d in enumerate(dims):
        if out[-1] and width + d > limit:
            out.append([])
            width = 0
        out[-1].append(k)
        width += d
    return out


def _plan(da: Sequence[int], db: Sequence[int], budget: int) -> tuple[list[list[int]], ...]:
    """Split both layer lists so that a group pair's ``8 * DA * DB`` bytes fit in ``budget``."""
    cells = budget / 8
    ta, tb = sum(da), sum(db)
    if ta * tb <= cells:
        return [list(range(len(da)))], [list(range(len(db)))]
    side = math.sqrt(cells)
    if ta <= side:
        return [list(range(len(da)))], _groups(db, cells / ta)
    if tb <= side:
        return _groups(da, cells / tb), [list(range(len(db)))]
    return _groups(da, side), _groups(db, side)


def _accumulate(
    src_a: _Source,
    src_b: _Source,
    tasks: list[tuple[list[int], list[int]]],
    batch_size: int,
    device: torch.device,
) -> list[_PairStats]:
    """One pass over the data filling one :class:`_PairStats` per (A-group, B-group) task.

    Every layer is shifted by its mean over the pass's first batch (a constant for the pass).
    """
    need_a = sorted({k for ga, _ in tasks for k in ga})
    need_b = sorted({k for _, gb in tasks for k in gb})
    same = src_b is src_a
    if same:
        need_a = need_b = sorted(set(need_a) | set(need_b))
    stats = [
        _PairStats(
            [src_a.dims[k] for k in ga], [src_b.dims[k] for k in gb], device, same and ga == gb
        )
        for ga, gb in tasks
    ]
    it_a = src_a.batches(batch_size, need_a)
    it_b = it_a if same else src_b.batches(batch_size, need_b)
    shift_a: list[Tensor] | None = None
    shift_b: list[Tensor] | None = None
    while True:
        fa = next(it_a, None)
        fb = fa if same else next(it_b, None)
        if fa is None or fb is None:
            if (fa is None) != (fb is None):
                raise DataError("the two inputs ended at different lengths")
            break
        fa = [f.to(device) for f in fa]
        fb = fa if same else [f.to(device) for f in fb]
        if shift_a is None or shift_b is None:
            shift_a = [f.mean(0) for f in fa]
            shift_b = shift_a if same else [f.mean(0) for f in fb]
        xa = {k: f - s for k, f, s in zip(need_a, fa, shift_a, strict=True)}
        xb = xa if same else {k: f - s for k, f, s in zip(need_b, fb, shift_b, strict=True)}
        for st, (ga, gb) in zip(stats, tasks, strict=True):
            x = torch.cat([xa[k] for k in ga], 1)
            st.update(x, x if st.symmetric else torch.cat([xb[k] for k in gb], 1))
    return stats


def linear_cka_pairs(
    src_a: Any,
    src_b: Any | None = None,
    debiased: bool = False,
    batch_size: int = 4096,
    memory_budget: int = 1 << 30,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Linear CKA between every layer of ``src_a`` and every layer of ``src_b`` (streaming).

    Args:
        src_a: a prepared source (internal) or ``(N, L, D)`` features.
        src_b: the second source; ``None`` compares ``src_a`` with itself.
        debiased: use the unbiased HSIC estimator (needs ``N >= 4``).
        batch_size: rows per minibatch.
        memory_budget: bytes allowed for the cross-product accumulators of one pass.
        device: where the float64 accumulation runs (default CPU).

    Returns:
        ``(L_a, L_b)`` float64; NaN where a layer is constant (zero self-HSIC).
    """
    a = src_a if isinstance(src_a, _Source) else _Source(src_a, None, None, "features")
    b = a if src_b is None else src_b
    b = b if isinstance(b, _Source) else _Source(b, None, None, "features_b")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    same = b is a
    ga, gb = _plan(a.dims, b.dims, memory_budget)
    # Passes: one per group pair (within one source, the lower triangle is skipped), then the
    # self-HSIC of every layer (diagonal blocks, packed into as few passes as fit).
    cross = [(x, y) for ix, x in enumerate(ga) for iy, y in enumerate(gb) if not same or iy >= ix]
    hsic = np.full((len(a.dims), len(b.dims)), np.nan)
    for task in cross:
        (st,) = _accumulate(a, b, [task], batch_size, dev)
        for i, ka in enumerate(task[0]):
            for j, kb in enumerate(task[1]):
                if st.symmetric and j < i:
                    continue  # the mirror of (j, i)
                hsic[ka, kb] = st.hsic(i, j, debiased)
                if same:
                    hsic[kb, ka] = hsic[ka, kb]
    if same:
        self_a = self_b = np.diag(hsic).copy()
    else:
        self_a = _self_hsic(a, batch_size, memory_budget, dev, debiased)
        self_b = _self_hsic(b, batch_size, memory_budget, dev, debiased)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.sqrt(np.outer(self_a, self_b))
        out = np.where(denom > 0, hsic / np.where(denom > 0, denom, 1.0), np.nan)
    return out


def _self_hsic(
    src: _Source,
    batch_size: int,
    budget: int,
    device: torch.device,
    debiased: bool,
) -> np.ndarray:
    """HSIC of every layer of ``src`` with itself, packing ``D_l^2`` blocks into passes."""
    cells = budget / 8
    passes: list[list[int]] = [[]]
    used = 0.0
    for k, d in enumerate(src.dims):
        if passes[-1] and used + d * d > cells:
            passes.append([])
            used = 0.0
        passes[-1].append(k)
        used += d * d
    out = np.full(len(src.dims), np.nan)
    for layers in passes:
        tasks = [([k], [k]) for k in layers]
        stats = _accumulate(src, src, tasks, batch_size, device)
        for k, st in zip(layers, stats, strict=True):
            out[k] = st.hsic(0, 0, debiased)
    return out


# ----------------------------------------------------------------------------- RSA


def _rdm_ranks(x: Tensor, distance: str) -> Tensor:
    """Standardised ranks of the upper triangle of ``x``'s RDM: ``(M,)`` float64, unit norm."""
    from scipy.stats import rankdata

    if distance == "correlation":
        x = x - x.mean(1, keepdim=True)
    norm = x.norm(dim=1, keepdim=True)
    xn = x / torch.where(norm > 0, norm, torch.ones_like(norm))
    iu = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    d = (1.0 - xn @ xn.T)[iu[0], iu[1]]
    r = torch.from_numpy(rankdata(d.numpy(), method="average"))
    r = r - r.mean()
    nr = r.norm()
    return (r / nr if nr > 0 else torch.full_like(r, float("nan"))).to(torch.float32)


def _rsa(a: _Source, b: _Source, max_samples: int, distance: str, seed: int, bs: int) -> np.ndarray:
    n = a.n
    rng = np.random.default_rng(seed)
    idx = np.arange(n) if n <= max_samples else np.sort(rng.choice(n, max_samples, replace=False))
    ra = torch.stack([_rdm_ranks(x, distance) for x in a.rows(idx, bs)])
    rb = ra if b is a else torch.stack([_rdm_ranks(x, distance) for x in b.rows(idx, bs)])
    return (ra.double() @ rb.double().T).numpy()


# ----------------------------------------------------------------------------- public


def similarity(
    cache_a: Any,
    cache_b: Any | None = None,
    method: str = "cka",
    *,
    layers: Any = None,
    layers_b: Any = None,
    pooling: str | Sequence[str] | None = None,
    pooling_b: str | Sequence[str] | None = None,
    batch_size: int = 4096,
    memory_budget: int = 1 << 30,
    distance: str = "cosine",
    max_samples: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
    return_names: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[str], list[str]]:
    """Similarity between every layer of ``cache_a`` and every layer of ``cache_b``.

    Args:
        cache_a: a FeatureCache, or features ``(N, L, P, D)`` / ``(N, L, D)`` / ``(N, D)`` / a
            list of ``(N, D_l)`` (a layer's ``P`` poolings are concatenated).
        cache_b: the same kinds, on the same ``N`` samples in the same order; ``None``
            compares ``cache_a``'s layers with each other.
        method: ``"cka"`` (linear CKA, biased HSIC), ``"cka-debiased"`` (unbiased HSIC of Song
            et al. 2012) or ``"rsa"`` (Spearman correlation between RDMs).
        layers: timm-style selection of ``cache_a``'s layers (``None`` all, int ``k`` the last
            ``k``, indices or names).
        layers_b: the same for ``cache_b``; default: ``layers``.
        pooling: which recorded pooling(s) of a cache to use (``"mean"``, ``"cls+mean"``:
            concatenated); default ``"cls"`` when recorded, else every recorded pooling.
        pooling_b: the same for ``cache_b``; default: ``pooling``.
        batch_size: rows per minibatch for the streaming CKA.
        memory_budget: bytes for the CKA cross-product accumulators of one pass over the data
            (more layers than fit are split into several passes).
        distance: RSA only: ``"cosine"`` or ``"correlation"`` distance between samples.
        max_samples: RSA only: at most this many samples (random, seeded) build the RDMs.
        seed: RSA only: seed of the sample draw.
        device: where CKA accumulates (float64); default CPU.
        return_names: also return the selected layer names of both inputs (caches: their
            recorded names; arrays: ``"layer j"``).

    Returns:
        ``(L_a, L_b)`` float64 array (``L_b = L_a`` when ``cache_b`` is None): CKA in
        ``[0, 1]`` (the debiased estimate can be slightly negative), RSA in ``[-1, 1]``;
        NaN for a constant layer. With ``return_names``: ``(matrix, names_a, names_b)``.

    Raises:
        ConfigError: unknown method or distance, bad layer/pooling selection or sizes.
        DataError: the two inputs do not hold the same samples; bad arrays; too few samples.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown similarity method {method!r}; choose from {', '.join(METHODS)}")
    if distance not in DISTANCES:
        raise ConfigError(f"unknown RSA distance {distance!r}; choose from {', '.join(DISTANCES)}")
    for name, v in (("batch_size", batch_size), ("max_samples", max_samples),
                    ("memory_budget", memory_budget)):  # fmt: skip
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"{name} must be a positive int, got {v!r}")
    if method == "rsa" and max_samples < 3:
        raise ConfigError(f"max_samples must be >= 3 for RSA, got {max_samples}")
    a = _Source(cache_a, layers, pooling, "cache_a")
    if cache_b is None:
        b = a
    else:
        check_same_samples(cache_a, cache_b)
        b = _Source(
            cache_b,
            layers if layers_b is None else layers_b,
            pooling if pooling_b is None else pooling_b,
            "cache_b",
        )
        if b.n != a.n:
            raise DataError(
                f"cache_a has {a.n} samples and cache_b {b.n}; they must hold the same samples"
            )
    need = {"cka": 2, "cka-debiased": 4, "rsa": 3}[method]
    if a.n < need:
        raise DataError(f"{method} needs at least {need} samples, got {a.n}")
    if method == "rsa":
        out = _rsa(a, b, int(max_samples), distance, int(seed), int(batch_size))
    else:
        out = linear_cka_pairs(
            a, b, debiased=method == "cka-debiased", batch_size=int(batch_size),
            memory_budget=int(memory_budget), device=device,
        )  # fmt: skip
    return (out, list(a.names), list(b.names)) if return_names else out
