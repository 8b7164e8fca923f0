"""What a probe accepts as ``X`` and ``y``: arrays ``(N, L, P, D)`` / ``(N, T, D)`` / ``(N, D)``, a
list of per-layer ``(N, D_l)`` arrays of any widths (zero-padded), or a
:class:`~probekit.cache.FeatureCache`. A 4-D array carries its poolings per layer ``P``; a 3-D
one has ``T = L * P`` layer-major tokens with ``P`` from ``tokens_per_layer`` (default 1).

Every reader returns the raw float32 CPU tensor ``(N, T, D)`` and its layout: ``dims`` (the
selected layers' widths), ``p`` (tokens per layer), ``names`` (layer names or None),
``n_input_layers`` and ``sel`` (the selected input layers), and for caches ``pools``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError, DataTypeError
from ..models.layers import resolve_indices

__all__ = ["cache_layout", "check_finite", "encode_labels", "read_arrays", "read_cache"]


def check_finite(x: Tensor, what: str = "X", offset: int = 0) -> None:
    """Refuse rows holding NaN or infinity, naming how many and the first one.

    Args:
        x: ``(N, ...)`` features.
        what: the argument's name in the message.
        offset: position of ``x[0]`` in the whole input (for inputs read chunk by chunk).

    Raises:
        DataError: some row has a non-finite value.
    """
    if x.numel() == 0 or bool(torch.isfinite(x.sum())):  # one reduction: NaN and inf propagate
        return
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)  # (N,)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()
        first = offset + int(rows[0])
        raise DataError(
            f"{what} has {rows.numel()} row(s) with NaN or infinity (first: row {first})"
        )


def _is_cache(X: Any) -> bool:
    return all(hasattr(X, a) for a in ("load", "layer_names", "labels", "dims"))


def _is_layer_list(X: Any) -> bool:
    return (
        isinstance(X, (list, tuple))
        and len(X) > 0
        and all(isinstance(a, (np.ndarray, Tensor)) and a.ndim == 2 for a in X)
    )


def _to_float_tensor(a: Any) -> Tensor:
    """Numbers as float32: real numbers and booleans, object arrays of numbers converted.

    Raises:
        DataError: sparse matrices, complex or text values.
        DataTypeError: an object array holding something that is not a number.
    """
    if isinstance(a, Tensor):
        if a.is_sparse or a.layout != torch.strided:
            raise DataError("sparse input is not supported: pass a dense tensor (X.to_dense())")
        if a.is_complex():
            raise DataError(f"Complex data not supported: X has dtype {a.dtype}; pass X.real")
        return a.detach().to("cpu", torch.float32)
    if hasattr(a, "toarray") and hasattr(a, "nnz"):  # scipy.sparse, without importing it
        raise DataError("sparse input is not supported: pass a dense array (X.toarray())")
    arr = np.asarray(a)
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except TypeError as err:  # numpy: "float() argument must be a string or a real number"
            raise DataTypeError(f"features must be numbers: {err}") from None
        except ValueError as err:
            raise DataError(f"features must be numbers: {err}") from None
    if arr.dtype.kind == "c":
        raise DataError(f"Complex data not supported: X has dtype {arr.dtype}; pass X.real")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"features must be numeric, got dtype {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _pad_layers(arrays: Sequence[Any]) -> tuple[Tensor, tuple[int, ...]]:
    """``[(N, D_l)]`` -> ``(N, L, max D)`` zero-padded, and the widths ``(L,)``."""
    ts = [_to_float_tensor(a) for a in arrays]
    n = ts[0].shape[0]
    if any(t.shape[0] != n for t in ts):
        raise DataError(
            f"per-layer arrays have different numbers of samples: {[t.shape[0] for t in ts]}"
        )
    dims = tuple(int(t.shape[1]) for t in ts)
    out = torch.zeros(n, len(ts), max(dims))
    for i, t in enumerate(ts):
        out[:, i, : dims[i]] = t
    return out, dims


def read_arrays(
    X: Any, layers: Any, tokens_per_layer: int | None, fitted: bool = False
) -> tuple[Tensor, dict[str, Any]]:
    """Raw input ``(N, T, D)`` float32 CPU from arrays, and its layout.

    Args:
        X: ``(N, L, P, D)`` (layers and poolings as separate axes, as
            :meth:`FeatureCache.load <probekit.cache.FeatureCache.load>` gives several
            poolings), ``(N, T, D)`` (``T = L * P`` layer-major tokens) or ``(N, D)`` array or
            tensor, or a list of per-layer ``(N, D_l)``.
        layers: the ``layers=`` selection over the input layers.
        tokens_per_layer: P of a 3-D input (``None``: 1); a 4-D input carries its own P, which
            this must equal when given. Ignored for a list of per-layer arrays (P = 1).
        fitted: ``tokens_per_layer`` is a fitted probe's (a contradicting 4-D input is a
            :class:`DataError`), not the user's parameter (a :class:`ConfigError`).

    Raises:
        ConfigError: a bad ``tokens_per_layer``, or one that contradicts a 4-D ``X``.
        DataError: a shape that is none of the above.
    """
    if _is_layer_list(X):
        x, dims = _pad_layers(X)
        p = 1
    else:
        x = _to_float_tensor(X)
        given = tuple(x.shape)
        if x.ndim == 2:
            x = x[:, None, :]
        if x.ndim not in (3, 4):
            hint = (
                " (Reshape your data: X.reshape(-1, 1) if it is one feature, X.reshape(1, -1)"
                " if it is one sample)"
                if x.ndim < 2
                else ""
            )
            raise DataError(
                "X must be (N, L, P, D), (N, T, D), (N, D) or a list of (N, D_l); got shape "
                f"{tuple(x.shape)}{hint}"
            )
        if 0 in x.shape[1:]:
            raise DataError(f"X has 0 feature(s) (shape={given}) while a minimum of 1 is required.")
        want = tokens_per_layer
        if want is not None and (
            isinstance(want, bool) or not isinstance(want, (int, np.integer)) or want < 1
        ):
            raise ConfigError(f"tokens_per_layer must be an int >= 1, got {want!r}")
        if x.ndim == 4:
            if want is not None and want != x.shape[2]:
                if fitted:
                    raise DataError(
                        f"X of shape {given} has {x.shape[2]} poolings per layer; the probe "
                        f"was fitted on tokens_per_layer_={want}"
                    )
                raise ConfigError(
                    f"tokens_per_layer={want} contradicts X of shape {given} (N, L, P, D) with "
                    f"P={x.shape[2]}: leave tokens_per_layer out"
                )
            p = int(x.shape[2])
            x = x.flatten(1, 2)
        else:
            p = 1 if want is None else int(want)
        if x.shape[1] % p:
            raise DataError(f"T={x.shape[1]} tokens is not a multiple of tokens_per_layer={p}")
        dims = None
    n_in = x.shape[1] // p
    sel = resolve_indices(layers, n_in)
    if sel != list(range(n_in)):
        x = x.unflatten(1, (n_in, p))[:, sel].flatten(1, 2)
        dims = tuple(dims[j] for j in sel) if dims is not None else None
    if dims is None:
        dims = (x.shape[2],) * len(sel)
    return x, {"dims": dims, "p": p, "names": None, "n_input_layers": n_in, "sel": sel}


def cache_layout(cache: Any, layers: Any, pooling: str | Sequence[str] | None) -> dict[str, Any]:
    """The layout of a cache selection; ``pooling=None``: every pooling the cache holds."""
    if pooling is None:
        pools: Any = list(cache.poolings)
    else:
        pools = [pooling] if isinstance(pooling, str) else list(pooling)
    if hasattr(cache, "select"):
        sel, pools = cache.select(layers, pools)
    else:
        sel = resolve_indices(layers, len(cache.layer_names), cache.layer_names)
    return {
        "dims": tuple(int(cache.dims[j]) for j in sel),
        "p": len(pools),
        "names": [str(cache.layer_names[j]) for j in sel],
        "n_input_layers": len(cache.layer_names),
        "sel": list(sel),
        "pools": list(pools),
    }


def read_cache(cache: Any, layers: Any, pooling: Any) -> tuple[Tensor, dict[str, Any]]:
    """Raw input ``(N, T, D)`` float32 CPU from a cache selection, and its layout."""
    info = cache_layout(cache, layers, pooling)
    x = cache.load(layers=info["sel"], pooling=info["pools"], dtype=torch.float32)
    if x.ndim == 4:  # (N, L, P, D): several poolings
        x = x.flatten(1, 2)
    return x.detach().to("cpu", torch.float32), info


def encode_labels(y: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(classes (C,), y_index (N,) int64)`` from ``(N,)`` class labels.

    A column ``(N, 1)`` is taken as ``(N,)`` with scikit-learn's ``DataConversionWarning``.

    Raises:
        DataError: not class labels (continuous numbers, several columns, NaN), a length
            other than ``n``, or fewer than 2 classes.
    """
    if isinstance(y, Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        import warnings

        from sklearn.exceptions import DataConversionWarning

        warnings.warn(
            "A column-vector y was passed when a 1d array was expected: y of shape "
            f"{y.shape} is read as ({y.shape[0]},); pass y.ravel()",
            DataConversionWarning,
            stacklevel=4,
        )
        y = y.reshape(-1)
    if y.ndim != 1:
        raise DataError(f"y must be 1-D class labels, got shape {y.shape}")
    if y.shape[0] != n:
        raise DataError(f"X has {n} samples but y has {y.shape[0]}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise DataError("y contains NaN or infinity")
    if y.dtype.kind == "f" or (y.dtype == object and _numeric_objects(y)):
        # scikit-learn's type_of_target: floats that are not all integers are "continuous"
        yf = y.astype(np.float64)
        frac = np.flatnonzero(yf != np.round(yf))
        if frac.size:
            raise DataError(
                f"Unknown label type: continuous (y holds non-integer numbers such as "
                f"{yf[frac[0]]!r}); a classifier needs class labels: use ProbeRegressor "
                "for numeric targets"
            )
    try:
        classes, yi = np.unique(y, return_inverse=True)
    except TypeError as err:  # labels of mixed types (1 and "a") cannot be sorted
        raise DataError(
            f"Unknown label type: y mixes types that cannot be ordered ({err})"
        ) from None
    if classes.size < 2:
        raise DataError(
            f"need samples of at least 2 classes to fit a probe; y has only 1 class "
            f"({classes.tolist()})"
        )
    return classes, yi.astype(np.int64)


def _numeric_objects(y: np.ndarray) -> bool:
    """Whether an object array holds only real numbers (as floats they may be continuous)."""
    return all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in y)
