"""Per-layer L2-regularised logistic regression (scikit-learn's objective) by full-batch L-BFGS.

Shapes: ``L`` layers, ``N`` samples, ``F`` features, ``C`` classes, ``K`` weight rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from ..errors import ConfigError
from .metrics import class_weights

__all__ = ["LinearSolution", "fit_linear_probes"]


# --------------------------------------------------------------------------- linear probes


@dataclass
class LinearSolution:
    """Per-layer logistic regression solved by :func:`fit_linear_probes`.

    Attributes:
        weight: ``(L, F, C)`` weights (for two classes: ``[-w/2, w/2]``, so the softmax equals
            the binary logistic model ``sigmoid(x @ w + b)``).
        bias: ``(L, C)`` intercepts.
        n_iter: ``(L,)`` L-BFGS iterations per layer.
        loss: ``(L,)`` final objective per layer.
    """

    weight: Tensor
    bias: Tensor
    n_iter: np.ndarray
    loss: np.ndarray


def _logistic_objective(
    X: Tensor,
    Y: Tensor,
    sw: Tensor,
    W: Tensor,
    b: Tensor,
    alpha: float,
    Xt: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean weighted log-loss plus ``alpha/2 ||W||^2`` and its gradient, without autograd.

    Layouts chosen for the CPU: weights class-major ``(K, F)`` so that ``X @ W.T`` and
    ``r @ X`` are the fast skinny products, and the softmax over classes-major ``(K, N)``
    logits (``log_softmax`` over a last dimension of 2 to 10 classes is ~10x slower).

    Args:
        X: ``(N, F)`` features.
        Y: ``(N,)`` labels in {0, 1} as float (binary, K = 1) or ``(K, N)`` one-hot.
        sw: ``(N,)`` sample weights divided by their sum.
        W: ``(K, F)`` weights; ``b``: ``(K,)`` intercepts.
        alpha: L2 strength on the mean loss (``1 / (C * sum of sample weights)``).
        Xt: ``X.T`` contiguous ``(F, N)``, for several classes: ``W @ Xt`` gives the class-major
            logits in one product, about twice as fast as ``(X @ W.T).T`` made contiguous.

    Returns:
        ``(loss, grad_W (K, F), grad_b (K,))``.
    """
    if Xt is not None:
        z = torch.addmm(b[:, None], W, Xt)  # (K, N)
    else:
        z = torch.addmm(b, X, W.T).T.contiguous()  # (K, N)
    if Y.ndim == 1:
        z1 = z[0]
        loss = (sw * (F.softplus(z1) - Y * z1)).sum()
        r = (sw * (torch.sigmoid(z1) - Y)).unsqueeze(0)  # (1, N)
    else:
        logp = z.log_softmax(0)
        loss = -(sw * (Y * logp).sum(0)).sum()
        r = (logp.exp_() - Y).mul_(sw)  # (K, N)
    gW = torch.mm(r, X).add_(W, alpha=alpha)
    loss = loss + 0.5 * alpha * W.pow(2).sum()
    return loss, gW, r.sum(1)


def _lbfgs(
    fg: Callable[[Tensor], tuple[Tensor, Tensor]],
    w0: Tensor,
    max_iter: int,
    tol: float,
    history: int = 10,
    ftol: float = 1e-10,
) -> tuple[Tensor, int]:
    """Minimise a smooth convex function with L-BFGS and a backtracking Armijo line search.

    Enough for L2-regularised logistic regression (strictly convex, so every step keeps the
    curvature pair positive), without ``torch.optim`` (whose first use imports TorchDynamo).

    Args:
        fg: ``w -> (f (), grad (P,))``.
        w0: ``(P,)`` start.
        max_iter: iterations (one gradient evaluation each, more when the step is cut).
        tol: stop when ``max |grad| <= tol`` (scipy's ``pgtol``, scikit-learn's ``tol``).
        history: number of curvature pairs kept.
        ftol: stop when the objective changes by less than ``ftol * max(|f|, 1)``.

    Returns:
        ``(w, n_iter)``.
    """
    w = w0.clone()
    f, g = fg(w)
    s_hist: list[Tensor] = []
    y_hist: list[Tensor] = []
    rho: list[Tensor] = []
    d = -g
    it = 0
    while it < max_iter and float(g.abs().max()) > tol:
        it += 1
        gtd = float(g @ d)
        if gtd >= 0:  # not a descent direction (numerical trouble): restart from -g
            s_hist, y_hist, rho, d = [], [], [], -g
            gtd = float(g @ d)
        t = min(1.0, 1.0 / float(g.abs().sum())) if not s_hist else 1.0
        f0 = float(f)
        for _ in range(30):
            w_new = w + t * d
            f_new, g_new = fg(w_new)
            if float(f_new) <= f0 + 1e-4 * t * gtd:
                break
            quad = -gtd * t * t / (2 * (float(f_new) - f0 - gtd * t))  # minimiser of the parabola
            t = min(max(quad, 0.1 * t), 0.5 * t)
        s, yv = w_new - w, g_new - g
        ys = s @ yv
        if float(ys) > 1e-12:
            if len(s_hist) == history:
                del s_hist[0], y_hist[0], rho[0]
            s_hist.append(s)
            y_hist.append(yv)
            rho.append(1.0 / ys)
        w, f, g = w_new, f_new, g_new
        if abs(f0 - float(f)) <= ftol * max(abs(f0), abs(float(f)), 1.0):
            break
        d = _two_loop(g, s_hist, y_hist, rho)
    return w, it


def _two_loop(g: Tensor, s_hist: list[Tensor], y_hist: list[Tensor], rho: list[Tensor]) -> Tensor:
    """L-BFGS direction ``-H g`` from the stored curvature pairs (Nocedal & Wright, Alg. 7.4)."""
    q = -g
    alphas = []
    for s, yv, r in zip(reversed(s_hist), reversed(y_hist), reversed(rho), strict=True):
        a = r * (s @ q)
        q = q - a * yv
        alphas.append(a)
    if s_hist:
        q = q * ((s_hist[-1] @ y_hist[-1]) / (y_hist[-1] @ y_hist[-1]))
    for s, yv, r, a in zip(s_hist, y_hist, rho, reversed(alphas), strict=True):
        q = q + s * (a - r * (yv @ q))
    return q


def _solve_one_layer(
    X: Tensor,
    Y: Tensor,
    sw: Tensor,
    alpha: float,
    W0: Tensor,
    b0: Tensor,
    max_iter: int,
    tol: float,
) -> tuple[Tensor, Tensor, int, float]:
    """L-BFGS on one layer's logistic regression; weights ``(K, F)`` and bias ``(K,)`` flattened.

    With several classes the layer's block is also held transposed (one more ``(N, F)`` copy
    per solving thread) for the faster logits product.
    """
    K, Fdim = W0.shape
    Xt = X.T.contiguous() if K > 1 else None

    def fg(w: Tensor) -> tuple[Tensor, Tensor]:
        W, b = w[: K * Fdim].view(K, Fdim), w[K * Fdim :]
        loss, gW, gb = _logistic_objective(X, Y, sw, W, b, alpha, Xt)
        return loss, torch.cat([gW.reshape(-1), gb])

    w, n_iter = _lbfgs(fg, torch.cat([W0.reshape(-1), b0]), max_iter, tol)
    loss, _ = fg(w)
    return w[: K * Fdim].view(K, Fdim).clone(), w[K * Fdim :].clone(), n_iter, float(loss)


def fit_linear_probes(
    X: Tensor,
    y: Tensor,
    n_classes: int,
    C: float = 1.0,
    class_weight: str | Sequence[float] | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
    init: LinearSolution | None = None,
    n_jobs: int | None = None,
    verbose: bool = False,
) -> LinearSolution:
    """Per-layer L2-regularised logistic regression, scikit-learn's objective, L-BFGS.

    Minimises per layer ``sum_i s_i CE_i / sum_i s_i + ||W||^2 / (2 C sum_i s_i)`` (the
    intercept is not penalised): the objective of ``LogisticRegression(C=C)``. Two classes
    use one weight vector (sigmoid), as scikit-learn does. Every layer is an independent
    L-BFGS solve (one shared L-BFGS over all layers needs a joint line search and many more
    evaluations); on CPU the layers are solved by ``n_jobs`` threads, each running
    single-threaded kernels on one layer's block, which stays in cache.

    Args:
        X: ``(L, N, F)`` features, layer-major (normalised; float32 recommended).
        y: ``(N,)`` class indices in ``[0, n_classes)``.
        n_classes: C.
        C: inverse regularisation strength, as in scikit-learn.
        class_weight: ``"balanced"``, ``None`` or ``C`` weights in class-index order.
        max_iter: L-BFGS iterations per layer (scikit-learn's default is 100).
        tol: stop when the largest gradient entry falls below it (scikit-learn's ``tol``).
        init: warm start (e.g. the solution on a subset).
        n_jobs: threads over layers on CPU (default: torch's thread count); ignored on GPU.
        verbose: tqdm bar over layers.

    Returns:
        A :class:`LinearSolution`.
    """
    if C <= 0:
        raise ConfigError(f"C must be positive, got {C}")
    L, _, Fdim = X.shape
    y = y.to(X.device).long()
    binary = n_classes == 2
    K = 1 if binary else n_classes
    Y = y.to(X.dtype) if binary else F.one_hot(y, n_classes).T.to(X.dtype).contiguous()
    sw_raw = class_weights(y, n_classes, class_weight).to(X.dtype)[y]
    alpha = 1.0 / (C * float(sw_raw.sum()))
    sw = sw_raw / sw_raw.sum()

    def solve(layer: int) -> tuple[Tensor, Tensor, int, float]:
        if init is not None:
            W0, b0 = _to_k_rows(init.weight[layer], init.bias[layer], binary)
        else:
            W0, b0 = X.new_zeros(K, Fdim), X.new_zeros(K)
        return _solve_one_layer(X[layer], Y, sw, alpha, W0.to(X), b0.to(X), max_iter, tol)

    jobs = 1 if X.device.type != "cpu" else min(L, n_jobs or torch.get_num_threads())
    bar = tqdm(total=L, desc="probekit linear", disable=not verbose, leave=False)
    results = _map_layers(solve, L, jobs, bar)
    bar.close()
    W = torch.stack([r[0] for r in results]).transpose(1, 2)  # (L, F, K)
    b = torch.stack([r[1] for r in results])  # (L, K)
    if binary:
        W = torch.cat([-W / 2, W / 2], -1)
        b = torch.cat([-b / 2, b / 2], -1)
    return LinearSolution(
        W.contiguous(), b, np.asarray([r[2] for r in results]), np.asarray([r[3] for r in results])
    )


def _map_layers(fn: Callable[[int], Any], n: int, jobs: int, bar: Any) -> list[Any]:
    """``[fn(0), ..., fn(n-1)]``, on ``jobs`` threads with single-threaded torch kernels."""
    if jobs <= 1:
        out = []
        for i in range(n):
            out.append(fn(i))
            bar.update()
        return out
    from concurrent.futures import ThreadPoolExecutor

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(jobs) as pool:
            futures = [pool.submit(fn, i) for i in range(n)]
            out = []
            for f in futures:
                out.append(f.result())
                bar.update()
            return out
    finally:
        torch.set_num_threads(threads)


def _to_k_rows(W: Tensor, b: Tensor, binary: bool) -> tuple[Tensor, Tensor]:
    """``(F, C)`` weights of a solution back to the solver's ``(K, F)`` layout."""
    if binary:
        return (W[:, 1:] - W[:, :1]).T, (b[1:] - b[:1])
    return W.T, b
