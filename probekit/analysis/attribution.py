"""Which layers a fitted probe's predictions rest on.

Four views, every one aligned with ``clf.layer_names_`` (``L`` columns):

* :func:`layer_attribution` -- the head's own layer weights ``(N, L)`` (attention heads only);
* :func:`ablation_sensitivity` -- replace one layer at a time and measure the drop in the
  true-class probability ``(N, L)`` and in accuracy ``(L,)``; works for every head; for a
  :class:`probekit.ProbeRegressor` the rise in squared error ``(N, L)`` and the drop in R² ``(L,)``;
* :func:`captum_attribution` -- captum's integrated gradients or feature ablation, summed per
  layer ``(N, L)``;
* :func:`attribution_agreement` -- per-sample Spearman correlation of two attributions ``(N,)``,
  e.g. to check whether a head's attention agrees with what ablation says.

Every function takes a fitted classifier ``clf`` (a :class:`probekit.ProbeClassifier` or anything
with the same fitted attributes) and calls ``clf.model_`` directly on ``clf.as_tensor(X)``, the raw
``(N, T, D)`` input with ``T = L * P`` layer-major tokens (``P = clf.tokens_per_layer_``); a 4-D
``(N, L, P, D)`` ``X`` (``cache.load()`` of several poolings) is read as its flat form.
``model_`` includes the estimator's input normalisation, so baselines are in raw feature space.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..estimator.fitted import PREDICT_BATCH
from ..estimator.fitted import class_index as _class_index
from ..estimator.fitted import fitted_device as _device
from ..estimator.fitted import head_outputs as _head_outputs
from ..estimator.fitted import inputs as _inputs

__all__ = [
    "AblationResult",
    "ablated_inputs",
    "ablation_sensitivity",
    "attribution_agreement",
    "captum_attribution",
    "head_forward",
    "is_regression_head",
    "layer_attribution",
    "layer_map",
    "layer_mask",
    "shuffle_orders",
    "stored_mean",
    "true_class",
]

# Largest number of float elements of ablated input built at once (128 MiB in fp32).
_MAX_ELEMENTS = 2**25


@dataclass
class AblationResult:
    """Per-layer ablation sensitivity of a fitted probe.

    Attributes:
        per_sample: ``(N, L)`` drop in the true-class probability when layer ``l`` is replaced:
            ``p(y | x) - p(y | x with layer l replaced)``. Positive = the layer helped.
            Regressors: the rise in squared error, in squared target units,
            ``(f(x with layer l replaced) - y)² - (f(x) - y)²`` (summed over targets).
        accuracy_drop: ``(L,)`` accuracy on the unablated input minus accuracy with layer ``l``
            replaced (regressors: R² minus R² with layer ``l`` replaced).
        base_accuracy: accuracy on the unablated input (regressors: R²).
        layer_names: the ``L`` layer names (``clf.layer_names_``).
        mode: ``"zero"``, ``"mean"`` or ``"shuffle"``.
        base_proba: ``(N,)`` true-class probability on the unablated input (regressors: the
            squared error).
        units: what ``per_sample`` measures: ``"probability"`` or ``"squared error"``.
    """

    per_sample: np.ndarray
    accuracy_drop: np.ndarray
    base_accuracy: float
    layer_names: list[str]
    mode: str
    base_proba: np.ndarray = field(default_factory=lambda: np.zeros(0))
    units: str = "probability"

    @property
    def mean_drop(self) -> np.ndarray:
        """``(L,)`` mean drop in true-class probability over samples."""
        return self.per_sample.mean(axis=0)

    @property
    def sem_drop(self) -> np.ndarray:
        """``(L,)`` standard error of :attr:`mean_drop` (0 for a single sample)."""
        n = self.per_sample.shape[0]
        if n < 2:
            return np.zeros(self.per_sample.shape[1])
        return self.per_sample.std(axis=0, ddof=1) / np.sqrt(n)


# --------------------------------------------------------------------------- helpers


def _proba_fn(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``x (B, T, D) -> class probabilities (B, C)`` through ``model`` (the captum forward)."""

    def forward(x: Tensor) -> Tensor:
        return torch.softmax(model(x).logits.float(), dim=-1)

    return forward


def is_regression_head(clf: Any) -> bool:
    """Whether ``clf`` is a regressor (scikit-learn's ``is_regressor``), e.g. a ProbeRegressor."""
    from sklearn.base import is_regressor

    return bool(is_regressor(clf))


def _target_fn(clf: Any, device: Any = "cpu") -> Callable[[Tensor], Tensor]:
    """``x (B, T, D) -> predicted targets (B, K)`` float64 on ``device``, in target units (a
    regressor's ``model_`` outputs standardised targets)."""
    scale = torch.as_tensor(np.asarray(clf.target_scale_), dtype=torch.float64, device=device)
    shift = torch.as_tensor(np.asarray(clf.target_mean_), dtype=torch.float64, device=device)

    def forward(x: Tensor) -> Tensor:
        return clf.model_(x).logits.double() * scale + shift

    return forward


def _r2(pred: Tensor, y: Tensor) -> Tensor:
    """R² ``(...)`` of predictions ``(..., N, K)`` against ``y`` ``(N, K)``, mean over targets."""
    ss_tot = (y - y.mean(0)).pow(2).sum(0).clamp_min(1e-300)
    return (1 - (pred - y).pow(2).sum(-2) / ss_tot).mean(-1)


def _regression_result(
    clf: Any, y: Tensor, base: Tensor, ablated: Tensor, mode: str
) -> AblationResult:
    """Ablation of a regressor: squared-error rise ``(N, L)`` and R² drop ``(L,)``."""
    base_se = (base - y).pow(2).sum(-1)  # (N,)
    abl_se = (ablated - y[:, None]).pow(2).sum(-1)  # (N, L)
    base_r2 = float(_r2(base, y))
    abl_r2 = _r2(ablated.transpose(0, 1), y)  # (L,)
    return AblationResult(
        per_sample=(abl_se - base_se[:, None]).numpy(),
        accuracy_drop=(base_r2 - abl_r2).numpy(),
        base_accuracy=base_r2,
        layer_names=list(clf.layer_names_),
        mode=mode,
        base_proba=base_se.numpy(),
        units="squared error",
    )


def head_forward(clf: Any) -> tuple[Callable[[Tensor], Tensor], torch.device]:
    """What ablation compares and where: class probabilities ``(B, C)`` (classifiers) or
    predicted targets ``(B, K)`` float64 in target units (regressors), and the fitted device."""
    device = _device(clf)
    return (_target_fn(clf, device) if is_regression_head(clf) else _proba_fn(clf.model_)), device


def ablated_inputs(
    forward: Callable[[Tensor], Tensor], xb: Tensor, repl: Tensor, mask: Tensor, device: Any
) -> tuple[Tensor, Tensor]:
    """Outputs on ``xb`` ``(b, T, D)`` and on its ``L`` ablated copies, ``(b, C)`` and
    ``(b, L, C)`` on CPU: copy ``l`` takes ``repl`` ``(b or 1, L or 1, T, D)`` where ``mask``
    ``(1, L, T, 1)`` marks layer ``l``'s tokens."""
    b, n_tokens, dim = xb.shape
    n_layers = mask.shape[1]
    xa = torch.where(mask, repl, xb[:, None])  # (b, L, T, D)
    p0 = forward(xb.to(device)).cpu()
    pa = forward(xa.reshape(b * n_layers, n_tokens, dim).to(device)).cpu()
    return p0, pa.reshape(b, n_layers, -1)


def true_class(p0: Tensor, pa: Tensor, tb: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """True-class probability and hit, unablated ``(b,)`` and ablated ``(b, L)``, from the
    probabilities ``p0`` ``(b, C)`` and ``pa`` ``(b, L, C)`` and the class indices ``tb`` ``(b,)``."""
    b, n_layers = pa.shape[:2]
    base_p = p0.gather(1, tb[:, None])[:, 0]
    abl_p = pa.gather(2, tb[:, None, None].expand(b, n_layers, 1))[..., 0]
    return base_p, abl_p, p0.argmax(1) == tb, pa.argmax(2) == tb[:, None]


def shuffle_orders(n: int, n_layers: int, random_state: int | None) -> Iterator[np.ndarray]:
    """The ``"shuffle"`` ablation's permutations ``(N,)`` int64, one per layer, in layer order."""
    rng = np.random.default_rng(random_state)
    for _ in range(n_layers):
        yield rng.permutation(n)


def layer_mask(n_layers: int, tokens_per_layer: int) -> Tensor:
    """``(L, T)`` bool: ``mask[l, t]`` is True when token ``t`` belongs to layer ``l``."""
    layer_of = torch.arange(n_layers * tokens_per_layer) // tokens_per_layer
    return layer_of[None, :] == torch.arange(n_layers)[:, None]


def stored_mean(clf: Any, n_tokens: int, dim: int) -> Tensor | None:
    """The train-split feature mean the estimator stored, ``(T, D)``, or None.

    Looked up as ``clf.feature_mean_`` first, then as a buffer of ``clf.model_`` whose name ends in
    ``mean`` (e.g. ``norm.mean``) with ``T * D`` elements.
    """
    cand = getattr(clf, "feature_mean_", None)
    if cand is not None:
        t = torch.as_tensor(np.asarray(cand) if not isinstance(cand, Tensor) else cand)
        if t.numel() == n_tokens * dim:
            return t.detach().to("cpu", torch.float32).reshape(n_tokens, dim)
    for name, buf in clf.model_.named_buffers():
        if (
            name.split(".")[-1] in ("mean", "mean_", "feature_mean")
            and buf.numel() == n_tokens * dim
        ):
            return buf.detach().to("cpu", torch.float32).reshape(n_tokens, dim)
    return None


def _resolve_baseline(clf: Any, x: Tensor, baseline: str | np.ndarray | Tensor) -> Tensor:
    """The replacement features ``(T, D)``.

    Args:
        clf: the fitted classifier.
        x: ``(N, T, D)`` the raw input.
        baseline: ``"zero"``; ``"mean"`` -- the estimator's stored train mean, else the mean of
            ``x`` over samples; or an explicit ``(T, D)`` (or ``(1, T, D)``, or ``(L, P, D)``
            as the mean of a 4-D input gives) array.
    """
    n_tokens, dim = x.shape[1], x.shape[2]
    if isinstance(baseline, str):
        if baseline == "zero":
            return torch.zeros(n_tokens, dim)
        if baseline != "mean":
            raise ValueError(f"baseline must be 'zero', 'mean' or a (T, D) array, got {baseline!r}")
        stored = stored_mean(clf, n_tokens, dim)
        return stored if stored is not None else x.mean(dim=0)
    b = torch.as_tensor(
        np.asarray(
            baseline.detach().cpu() if isinstance(baseline, Tensor) else baseline, dtype=np.float32
        )
    )
    if b.ndim == 3 and b.shape[0] == 1:
        b = b[0]
    elif b.ndim == 3 and b.shape[0] * b.shape[1] == n_tokens:  # (L, P, D): a 4-D input's mean
        b = b.flatten(0, 1)
    if tuple(b.shape) != (n_tokens, dim):
        raise ValueError(
            f"baseline must have shape (T, D) = {(n_tokens, dim)}, got {tuple(b.shape)}"
        )
    return b


def _heads_with(attr: str) -> list[str]:
    """Names of registered heads whose ``ProbeOutput.<attr>`` is set (tiny forward per head)."""
    try:
        from ..probes import create_probe, list_probes
    except ImportError:  # pragma: no cover - registry always ships with probekit
        return []
    names = []
    for name in list_probes():
        try:
            head = create_probe(name, n_layers=3, dims=8, n_classes=2).eval()
            with torch.no_grad():
                if getattr(head(torch.randn(2, 3, 8)), attr) is not None:
                    names.append(name)
        except Exception:  # a head that needs other params is just not listed
            continue
    return names


def _head_name(clf: Any) -> str:
    head = getattr(clf, "head", None)
    return head if isinstance(head, str) else type(clf.model_).__name__


# --------------------------------------------------------------------------- public API


def layer_attribution(clf: Any, X: Any) -> np.ndarray:
    """The head's own per-sample layer weights.

    Args:
        clf: a fitted probe classifier.
        X: input accepted by ``clf.as_tensor`` (``(N, L, P, D)`` / ``(N, T, D)`` array, tensor,
            list of layers, ...).

    Returns:
        ``(N, L)`` non-negative weights, each row summing to 1, columns aligned with
        ``clf.layer_names_``.

    Raises:
        ValueError: the head gives no layer weights (``linear``, ``concat``); the message names the
            heads that do. Use :func:`ablation_sensitivity` for those.
    """
    x = _inputs(clf, X)
    parts = _head_outputs(clf, x, "layer_weights")
    if any(p is None for p in parts):
        having = _heads_with("layer_weights")
        hint = f" Heads that do: {', '.join(having)}." if having else ""
        raise ValueError(
            f"head {_head_name(clf)!r} gives no layer weights.{hint} "
            "Use ablation_sensitivity(clf, X, y) or captum_attribution(clf, X) for any head."
        )
    return torch.cat(parts).numpy()  # type: ignore[arg-type]


def layer_map(clf: Any, X: Any) -> np.ndarray:
    """The head's layer-to-layer map (AILA heads).

    Args:
        clf: a fitted probe classifier.
        X: input accepted by ``clf.as_tensor``.

    Returns:
        ``(N, L, L)``: row ``j`` says how layer ``j`` mixes the earlier layers.

    Raises:
        ValueError: the head gives no layer map.
    """
    x = _inputs(clf, X)
    parts = _head_outputs(clf, x, "layer_map")
    if any(p is None for p in parts):
        having = _heads_with("layer_map")
        hint = f" Heads that do: {', '.join(having)}." if having else ""
        raise ValueError(f"head {_head_name(clf)!r} gives no layer-to-layer map.{hint}")
    return torch.cat(parts).numpy()  # type: ignore[arg-type]


def ablation_sensitivity(
    clf: Any,
    X: Any,
    y: Any,
    mode: Literal["zero", "mean", "shuffle"] = "zero",
    baseline: np.ndarray | Tensor | None = None,
    random_state: int | None = 0,
) -> AblationResult:
    """Replace one layer at a time and measure how much the prediction suffers.

    For each layer ``l`` every token of that layer (all ``P`` tokens when
    ``tokens_per_layer > 1``) is replaced, the other layers are kept, and the probe is re-run.
    All ``L`` ablated copies of a chunk of samples go through the model in one batch.

    Args:
        clf: a fitted probe classifier (any head, including ``linear`` and ``concat``; for
            ``linear`` only the selected layer can matter).
        X: input accepted by ``clf.as_tensor``, ``N`` samples.
        y: ``(N,)`` true labels (values of ``clf.classes_``); for a regressor the ``(N,)`` or
            ``(N, K)`` true targets.
        mode: what replaces the layer:
            ``"zero"`` -- zeros;
            ``"mean"`` -- the train mean: ``baseline`` if given, else the estimator's stored
            normalisation mean (``clf.feature_mean_`` or a ``*.mean`` buffer of ``clf.model_``
            with ``T * D`` elements), else the mean of ``X``;
            ``"shuffle"`` -- the same layer of other samples, a seeded permutation of the
            ``N`` samples drawn independently for each layer.
        baseline: ``(T, D)`` raw-feature mean to use for ``mode="mean"``.
        random_state: seed of the ``"shuffle"`` permutations.

    Returns:
        An :class:`AblationResult` with ``per_sample (N, L)``, ``accuracy_drop (L,)``,
        ``base_accuracy``, ``layer_names`` and ``mode``.

    Note:
        With ``mode="zero"`` or ``"mean"`` this equals captum's ``FeatureAblation`` with one
        feature-mask id per layer, the same baseline and ``target`` = the true class
        (see :func:`captum_attribution`).
    """
    if mode not in ("zero", "mean", "shuffle"):
        raise ValueError(f"mode must be 'zero', 'mean' or 'shuffle', got {mode!r}")
    if baseline is not None and mode != "mean":
        raise ValueError(f"baseline is only used with mode='mean', got mode={mode!r}")
    x = _inputs(clf, X)
    n, n_tokens, dim = x.shape
    n_layers, per = int(clf.n_layers_), int(clf.tokens_per_layer_)
    regression = is_regression_head(clf)
    if regression:
        target = torch.as_tensor(np.asarray(y, dtype=np.float64).reshape(n, -1))  # (N, K)
    else:
        target = torch.as_tensor(_class_index(clf, y, n))
    mask = layer_mask(n_layers, per)[None, :, :, None]  # (1, L, T, 1)

    if mode == "shuffle":
        perms = torch.as_tensor(np.stack(list(shuffle_orders(n, n_layers, random_state))))  # (L, N)
        fill = None
    else:
        perms = None
        fill = _resolve_baseline(clf, x, mode if baseline is None else baseline)  # (T, D)

    forward, device = head_forward(clf)
    chunk = max(1, _MAX_ELEMENTS // (n_layers * n_tokens * dim))
    if regression:
        base_out = torch.empty(n, target.shape[1], dtype=torch.float64)
        abl_out = torch.empty(n, n_layers, target.shape[1], dtype=torch.float64)
    base_p = torch.empty(n)
    abl_p = torch.empty(n, n_layers)
    base_hit = torch.empty(n, dtype=torch.bool)
    abl_hit = torch.empty(n, n_layers, dtype=torch.bool)
    with torch.inference_mode():
        for start in range(0, n, chunk):
            idx = torch.arange(start, min(start + chunk, n))
            if perms is not None:
                repl = x[perms[:, idx]].transpose(0, 1)  # (b, L, T, D)
            else:
                repl = fill[None, None]  # type: ignore[index]  # (1, 1, T, D)
            p0, pa = ablated_inputs(forward, x[idx], repl, mask, device)  # (b, C), (b, L, C)
            if regression:
                base_out[idx], abl_out[idx] = p0.double(), pa.double()
                continue
            base_p[idx], abl_p[idx], base_hit[idx], abl_hit[idx] = true_class(p0, pa, target[idx])

    if regression:
        return _regression_result(clf, target, base_out, abl_out, mode)
    base_acc = float(base_hit.float().mean())
    return AblationResult(
        per_sample=(base_p[:, None] - abl_p).numpy(),
        accuracy_drop=(base_acc - abl_hit.float().mean(0)).numpy(),
        base_accuracy=base_acc,
        layer_names=list(clf.layer_names_),
        mode=mode,
        base_proba=base_p.numpy(),
    )


def captum_attribution(
    clf: Any,
    X: Any,
    y: Any = None,
    method: Literal["integrated_gradients", "feature_ablation"] = "integrated_gradients",
    baseline: Literal["mean", "zero"] | np.ndarray | Tensor = "mean",
    target: Any = None,
    n_steps: int = 50,
    internal_batch_size: int | None = None,
) -> np.ndarray:
    """Layer attribution through captum on ``clf.model_`` (forward: class probabilities).

    Args:
        clf: a fitted probe classifier.
        X: input accepted by ``clf.as_tensor``, ``N`` samples.
        y: ``(N,)`` true labels; needed only for ``target="true"``.
        method: ``"integrated_gradients"`` (gradients w.r.t. the raw ``(N, T, D)`` input,
            summed over the tokens of each layer and over ``D``) or ``"feature_ablation"`` (one
            feature-mask id per layer: all features of all tokens of a layer are replaced
            together; gives ``f(x) - f(x with layer l replaced)``).
        baseline: ``"mean"`` (train mean, resolved as in :func:`ablation_sensitivity`),
            ``"zero"``, or an explicit ``(T, D)`` array.
        target: whose probability is explained: ``None`` -- the predicted class; ``"true"`` --
            the class in ``y``; a label of ``clf.classes_``; or ``(N,)`` labels. For a
            :class:`~probekit.ProbeRegressor` the predicted value (in target units) is
            explained: ``None`` (the first target) or a target index.
        n_steps: integration steps of integrated gradients.
        internal_batch_size: samples x steps per forward of integrated gradients (memory bound);
            default: about 2**25 input elements per forward.

    Returns:
        ``(N, L)`` attributions aligned with ``clf.layer_names_``. For ``"feature_ablation"`` with
        ``target="true"`` this equals ``ablation_sensitivity(...).per_sample`` of the same baseline.
    """
    try:
        from captum.attr import FeatureAblation, IntegratedGradients
    except ImportError as err:  # pragma: no cover - captum is a dependency
        raise ImportError("captum_attribution needs captum: pip install captum") from err
    if method not in ("integrated_gradients", "feature_ablation"):
        raise ValueError(
            f"method must be 'integrated_gradients' or 'feature_ablation', got {method!r}"
        )
    x = _inputs(clf, X)
    n, n_tokens, dim = x.shape
    n_layers, per = int(clf.n_layers_), int(clf.tokens_per_layer_)
    base = _resolve_baseline(clf, x, baseline)[None]  # (1, T, D)
    model, device = clf.model_, _device(clf)
    forward = _proba_fn(model)
    if is_regression_head(clf):  # explain the predicted value of one target, in target units
        if target is not None and not (
            isinstance(target, (int, np.integer)) and 0 <= target < len(clf.target_scale_)
        ):
            raise ValueError(
                f"for a regressor, target is None or an output index in "
                f"0..{len(clf.target_scale_) - 1}, got {target!r}"
            )
        forward = _target_fn(clf, device)
        tgt = np.full(n, int(target or 0), dtype=np.int64)
    elif isinstance(target, str) and target == "true":
        if y is None:
            raise ValueError("target='true' needs y")
        tgt = _class_index(clf, y, n)
    elif target is None:
        tgt = np.empty(n, dtype=np.int64)
        with torch.inference_mode():
            for start in range(0, n, PREDICT_BATCH):
                p = forward(x[start : start + PREDICT_BATCH].to(device))
                tgt[start : start + PREDICT_BATCH] = p.argmax(1).cpu().numpy()
    else:
        tgt = _class_index(clf, target, n, what="target")

    based = base.to(device)
    out = torch.empty(n, n_layers)
    if method == "feature_ablation":
        ablation = FeatureAblation(forward)
        ids = (torch.arange(n_tokens, device=device) // per)[None, :, None]
        mask = ids.expand(1, n_tokens, dim)  # (1, T, D): one id per layer
        chunk = max(1, _MAX_ELEMENTS // (n_layers * n_tokens * dim))
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            attr = ablation.attribute(
                x[sl].to(device),
                baselines=based,
                target=torch.as_tensor(tgt[sl], device=device),
                feature_mask=mask,
                perturbations_per_eval=n_layers,
            )  # (b, T, D), constant within each layer
            out[sl] = attr.reshape(-1, n_layers, per * dim)[:, :, 0].detach().float().cpu()
    else:
        ig = IntegratedGradients(forward)
        batch = internal_batch_size or max(n_steps, (_MAX_ELEMENTS // (n_tokens * dim)))
        chunk = max(1, batch // n_steps)
        with torch.enable_grad():
            for start in range(0, n, chunk):
                sl = slice(start, start + chunk)
                attr = ig.attribute(
                    x[sl].to(device),
                    baselines=based,
                    target=torch.as_tensor(tgt[sl], device=device),
                    n_steps=n_steps,
                    internal_batch_size=batch,
                )  # (b, T, D)
                out[sl] = attr.reshape(-1, n_layers, per * dim).sum(-1).detach().float().cpu()
    return out.numpy()


def attribution_agreement(
    a: np.ndarray | Sequence[Any], b: np.ndarray | Sequence[Any]
) -> np.ndarray:
    """Per-sample Spearman rank correlation of two attributions.

    Same semantics as ``scipy.stats.spearmanr(a[i], b[i])`` row by row: ties get their average
    rank, and a row where either input is constant (or has a NaN) gives NaN. Vectorised over rows.

    Args:
        a: ``(N, L)`` attribution, e.g. :func:`layer_attribution`.
        b: ``(N, L)`` attribution, e.g. ``ablation_sensitivity(...).per_sample``.

    Returns:
        ``(N,)`` correlations in ``[-1, 1]`` (NaN for constant rows).
    """
    from scipy.stats import rankdata

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if b.ndim == 1:
        b = b[None]
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must both be (N, L), got {a.shape} and {b.shape}")
    bad = np.isnan(a).any(1) | np.isnan(b).any(1)
    ra = rankdata(np.nan_to_num(a), axis=1)
    rb = rankdata(np.nan_to_num(b), axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    num = (ra * rb).sum(1)
    den = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = num / den
    rho[(den == 0) | bad] = np.nan
    return np.clip(rho, -1.0, 1.0)
