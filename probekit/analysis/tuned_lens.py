"""The tuned lens (Belrose et al., 2023): the logit lens with one learned affine translator per
layer.

Layer ``l < L`` of a causal LM is read as ``unembed(final_norm(h_l + A_l h_l + b_l))``: a
residual translator (``A_l``, ``b_l`` start at zero, so an untrained tuned lens *is* the logit
lens, and weight decay pulls it toward the identity, as in the reference implementation). The
translators are trained so that each layer's distribution matches the model's own next-token
distribution at the same token (the last layer's): the loss is ``KL(p_final || p_lens)`` in nats,
averaged over the token rows of the model's own text, summed over the layers. The last layer
needs no translator.

* :func:`token_states`: every layer of every (non-special, non-pad) token of a few texts,
  recorded in memory: ``(T, L + 1, D)``.
* :func:`fit_tuned_lens`: train a :class:`TunedLens` (AdamW; the unembedding in bf16 where native).
* :func:`lens_divergence`: per-layer ``KL(p_final || p_lens)`` and top-1 agreement with the final
  layer of the tuned lens or the logit lens on held-out tokens, over the whole vocabulary.
* :class:`TunedLens` saves as ``tuned-lens.safetensors`` + ``tuned-lens.json`` (no pickle).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from ..errors import ConfigError
from .lens import head_rows, normed_layers, require_unembedding

__all__ = ["TunedLens", "fit_tuned_lens", "kl_divergence", "lens_divergence", "token_states"]

WEIGHTS_NAME = "tuned-lens.safetensors"
CONFIG_NAME = "tuned-lens.json"


def token_states(
    model: Any, texts: Sequence[str], *, max_tokens: int | None = None, batch_size: int = 16
) -> Tensor:
    """Every layer of the model at every token of ``texts``, in memory.

    Padding and special tokens (``<bos>``: its residual stream is an outlier the lens is not
    about) are left out; texts are read in order until ``max_tokens`` tokens are kept.

    Returns:
        ``(T, L + 1, D)`` float32 states, layers in ``model.layers`` order.
    """
    from ..recording.extraction import record

    if model.tokenizer is None:
        raise ConfigError(f"token states need a text model; {model.spec} has no tokenizer")
    special = torch.as_tensor(sorted(set(model.tokenizer.all_special_ids)), dtype=torch.long)
    names = [s.name for s in model.layers]
    parts: list[Tensor] = []
    kept = 0
    for s in range(0, len(texts), batch_size):
        chunk = [str(t) for t in texts[s : s + batch_size]]
        inputs = model.preprocess(chunk)  # as record() pads this batch
        ids = inputs["input_ids"]
        mask = inputs["attention_mask"].bool() & ~torch.isin(ids, special)
        states = record(model, chunk, pooling="tokens", batch_size=len(chunk))
        block = torch.stack([states[f"{n}.tokens"][mask] for n in names], dim=1)
        parts.append(block)
        kept += block.shape[0]
        if max_tokens is not None and kept >= max_tokens:
            break
    if not parts or kept == 0:
        raise ConfigError("token states: the texts hold no token")
    out = torch.cat(parts)
    return out[:max_tokens] if max_tokens is not None else out


def kl_divergence(target_logp: Tensor, logits: Tensor) -> Tensor:
    """``KL(p || q)`` per row in nats: ``sum_v p_v (log p_v - log q_v)``.

    Args:
        target_logp: ``(N, V)`` log-probabilities of ``p``.
        logits: ``(N, V)`` logits of ``q`` (normalised here).

    Returns:
        ``(N,)`` float32.
    """
    logq = F.log_softmax(logits.float(), dim=-1)
    p = target_logp.float().exp()
    return (p * (target_logp.float() - logq)).sum(-1)


class TunedLens(nn.Module):
    """One residual affine translator per layer but the last.

    Attributes:
        layer_names: the model's ``L + 1`` layers (``model.layers``); translator ``l`` reads
            layer ``layer_names[l]``.
        translators: ``L`` ``nn.Linear(D, D)``: layer ``l`` is read at ``h + translators[l](h)``.
        info: the model spec and how the lens was trained (steps, tokens, seconds, ...).
        metrics: per-layer held-out KL and top-1 agreement of the tuned and the logit lens
            (:func:`lens_divergence`), when held-out tokens were given.
    """

    def __init__(self, layer_names: Sequence[str], dim: int, info: dict[str, Any] | None = None):
        super().__init__()
        self.layer_names = list(layer_names)
        self.dim = int(dim)
        linears = [nn.Linear(self.dim, self.dim) for _ in range(len(self.layer_names) - 1)]
        for t in linears:
            nn.init.zeros_(t.weight)
            nn.init.zeros_(t.bias)
        self.translators = nn.ModuleList(linears)
        self.info: dict[str, Any] = dict(info or {})
        self.metrics: dict[str, Any] = {}

    def transform(self, hidden: Tensor, layer: int) -> Tensor:
        """``(N, D)`` states of layer ``layer`` -> ``h + A h + b`` (the last layer unchanged)."""
        layer = layer % len(self.layer_names)
        if layer == len(self.translators):
            return hidden
        t: nn.Linear = self.translators[layer]  # type: ignore[assignment]
        return hidden + t(hidden.to(t.weight.dtype))

    def logits(
        self, model: Any, hidden: Tensor, layer: int, token_ids: Sequence[int] | None = None
    ) -> Tensor:
        """The tuned lens's ``(N, V)`` (or ``(N, K)`` over ``token_ids``) float32 logits of
        ``(N, D)`` states of layer ``layer`` of ``model``."""
        from .lens import lens_logits

        normed = normed_layers(model, [self.layer_names[layer]])[0]
        with torch.no_grad():
            h = self.transform(hidden.to(next(self.parameters()).device), layer)
        return lens_logits(model, h, normed, token_ids)

    def save(self, path: str | Path) -> Path:
        """Write ``path/tuned-lens.safetensors`` (``translators.<l>.weight`` ``(D, D)``,
        ``translators.<l>.bias`` ``(D,)``) and ``path/tuned-lens.json``; returns ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(path / WEIGHTS_NAME))
        config = {
            "layer_names": self.layer_names,
            "dim": self.dim,
            "info": self.info,
            "metrics": self.metrics,
        }
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TunedLens:
        """A lens saved by :meth:`save`.

        Raises:
            ConfigError: the folder holds no tuned lens.
        """
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise ConfigError(f"{path} holds no tuned lens ({CONFIG_NAME}, {WEIGHTS_NAME})")
        config = json.loads((path / CONFIG_NAME).read_text())
        lens = cls(config["layer_names"], config["dim"], config.get("info"))
        lens.metrics = dict(config.get("metrics") or {})
        lens.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
        return lens


def _as_states(model: Any, data: Any, max_tokens: int | None) -> Tensor:
    """Texts -> :func:`token_states`; a ``(T, L + 1, D)`` tensor or array is kept."""
    if isinstance(data, (Tensor, np.ndarray)):
        states = torch.as_tensor(data).float()
    else:
        states = token_states(model, list(data), max_tokens=max_tokens)
    if states.ndim != 3 or states.shape[1] != len(model.layers):
        raise ConfigError(
            f"token states must be (T, {len(model.layers)}, D) for {model.spec}, "
            f"got {tuple(states.shape)}"
        )
    return states


class _Reader:
    """The model's final norm and unembedding (all of it, or the rows of a few token ids),
    applied to one layer's states; with ``bf16`` precision the unembedding matrix is a bfloat16
    copy (the norm and the translators stay float32)."""

    def __init__(self, model: Any, token_ids: Tensor | None = None, precision: str = "fp32"):
        from .._utils.runtime import resolve_precision

        require_unembedding(model, "the tuned lens")
        self.model = model
        self.normed = normed_layers(model, [s.name for s in model.layers])
        param = next(model.final_norm.parameters(), None)
        self.device = param.device if param is not None else torch.device("cpu")
        self.precision = resolve_precision(precision, self.device.type)
        dtype = torch.bfloat16 if self.precision == "bf16" else None
        ids = None if token_ids is None else token_ids.tolist()
        head = None
        if ids is not None or dtype is not None:
            head = head_rows(model.unembed, ids, dtype)
        if ids is not None and head is None:
            raise ConfigError("train_vocab needs a linear unembedding")
        self.head = head if head is not None else model.unembed

    def __call__(self, hidden: Tensor, layer: int) -> Tensor:
        h = hidden if self.normed[layer] else self.model.final_norm(hidden)
        out: Tensor = self.head(h)
        return out.float()


def lens_divergence(
    model: Any,
    states: Tensor,
    lens: TunedLens | None = None,
    *,
    batch_size: int = 64,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Per layer, how far the lens's distribution is from the model's final one, over the whole
    vocabulary.

    Args:
        model: the causal LM (with ``unembed``).
        states: ``(T, L + 1, D)`` token states (:func:`token_states`).
        lens: a tuned lens; ``None``: the logit lens.
        batch_size: tokens per batch (``(batch_size, V)`` logits at once).
        precision: numerics of the unembedding matmul (``fp32``, ``bf16``, ``auto``: see
            :func:`probekit.extract`).

    Returns:
        ``{"layers": names, "kl": [L + 1 floats], "top1": [L + 1 floats], "tokens": T}``: the
        mean ``KL(p_final || p_lens)`` in nats and the fraction of tokens whose top-1 token
        agrees with the final layer's (the last layer: 0 and 1).
    """
    reader = _Reader(model, precision=precision)
    n_layers = len(model.layers)
    kl = torch.zeros(n_layers, dtype=torch.float64)
    top1 = torch.zeros(n_layers, dtype=torch.float64)
    last = n_layers - 1
    with torch.no_grad():
        for s in range(0, states.shape[0], batch_size):
            block = states[s : s + batch_size].to(reader.device)
            target = F.log_softmax(reader(block[:, last], last), dim=-1)
            best = target.argmax(-1)
            for layer in range(n_layers):
                h = block[:, layer]
                if lens is not None:
                    h = lens.transform(h, layer)
                if layer == last:  # the final distribution itself
                    top1[layer] += block.shape[0]
                    continue
                logits = reader(h, layer)
                kl[layer] += kl_divergence(target, logits).clamp_min(0).sum().double().cpu()
                top1[layer] += (logits.argmax(-1) == best).sum().double().cpu()
    t = int(states.shape[0])
    return {
        "layers": [s.name for s in model.layers],
        "kl": (kl / t).tolist(),
        "top1": (top1 / t).tolist(),
        "tokens": t,
    }


def _train_vocab(reader: _Reader, states: Tensor, k: int, batch_size: int) -> Tensor:
    """The ``k`` token ids with the most final-layer probability over the training tokens."""
    mass = None
    last = states.shape[1] - 1
    with torch.no_grad():
        for s in range(0, states.shape[0], batch_size):
            p = F.softmax(reader(states[s : s + batch_size, last].to(reader.device), last), -1)
            mass = p.sum(0) if mass is None else mass + p.sum(0)
    assert mass is not None  # at least one token
    return mass.topk(min(k, mass.numel())).indices.sort().values.cpu()


def fit_tuned_lens(
    model: Any,
    train: Any,
    held_out: Any = None,
    *,
    steps: int = 250,
    batch_tokens: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    train_vocab: int | None = None,
    max_tokens: int | None = 4096,
    precision: str = "auto",
    seed: int = 0,
    progress: bool = False,
) -> TunedLens:
    """Train a tuned lens on the token rows of ``train``.

    Args:
        model: a causal LM (:class:`~probekit.LoadedModel` with ``unembed`` and ``final_norm``).
        train: texts, or ``(T, L + 1, D)`` token states (:func:`token_states`).
        held_out: texts or token states to score both lenses on (:func:`lens_divergence`,
            whole vocabulary), stored in ``lens.metrics``; ``None``: no scores.
        steps: AdamW steps; each draws ``batch_tokens`` training tokens (seeded) and sums the
            ``L`` layers' mean ``KL(p_final || p_lens)``; the learning rate decays linearly to 0.
        lr, weight_decay: AdamW's (the decay pulls every translator toward the identity).
        train_vocab: train the KL over the ``k`` tokens the final layer gives the most
            probability on the training tokens (both distributions renormalised over them):
            ``V / k`` times cheaper where the unembedding matmul dominates (a 262k vocabulary
            on a CPU); ``None``: the whole vocabulary, the reference's objective. Scores are
            always over the whole vocabulary.
        max_tokens: at most this many training (and held-out) tokens recorded from texts.
        precision: ``auto`` (bf16 where the device computes it natively), ``bf16`` or ``fp32``:
            the unembedding matmul in bfloat16 (a bfloat16 copy of its matrix; the norm, the
            translators and the KL stay float32).
        seed: seeds the token batches.
        progress: print the loss every 25 steps.

    Returns:
        the trained :class:`TunedLens` (on the model's device); ``lens.info`` says how it was
        trained and how long it took.
    """
    require_unembedding(model, "the tuned lens")
    if steps < 0 or batch_tokens < 1:
        raise ConfigError(f"steps must be >= 0 and batch_tokens >= 1, got {steps}, {batch_tokens}")
    t0 = time.perf_counter()
    states = _as_states(model, train, max_tokens)
    record_s = time.perf_counter() - t0
    full = _Reader(model, precision=precision)
    vocab = None if train_vocab is None else _train_vocab(full, states, train_vocab, 64)
    reader = full if vocab is None else _Reader(model, vocab, precision)
    n_layers = states.shape[1]
    lens = TunedLens([s.name for s in model.layers], states.shape[2]).to(reader.device)
    opt = torch.optim.AdamW(lens.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: max(0.0, 1.0 - i / max(1, steps)))
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    t1 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(states.shape[0], (min(batch_tokens, states.shape[0]),), generator=gen)
        block = states[idx].to(reader.device)
        with torch.no_grad():
            target = F.log_softmax(reader(block[:, -1], n_layers - 1), dim=-1)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for layer in range(n_layers - 1):  # one backward per layer: one (B, V) graph at a time
            logits = reader(lens.transform(block[:, layer], layer), layer)
            loss = kl_divergence(target, logits).mean()
            loss.backward()
            total += float(loss.detach())
        nn.utils.clip_grad_norm_(lens.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(total / max(1, n_layers - 1))
        if progress and (step % 25 == 0 or step == steps - 1):
            print(f"tuned lens step {step}: mean KL {losses[-1]:.4f} nats", flush=True)
    train_s = time.perf_counter() - t1
    lens.info = {
        "model": model.spec,
        "steps": steps,
        "batch_tokens": batch_tokens,
        "lr": lr,
        "weight_decay": weight_decay,
        "train_vocab": None if vocab is None else int(vocab.numel()),
        "train_tokens": int(states.shape[0]),
        "precision": reader.precision,
        "seed": seed,
        "record_seconds": round(record_s, 2),
        "train_seconds": round(train_s, 2),
        "train_kl_first": losses[0] if losses else None,
        "train_kl_last": float(np.mean(losses[-10:])) if losses else None,
    }
    if held_out is not None:
        t2 = time.perf_counter()
        held = _as_states(model, held_out, max_tokens)
        lens.metrics = {
            "tuned": lens_divergence(model, held, lens, precision=precision),
            "logit": lens_divergence(model, held, None, precision=precision),
        }
        lens.info["eval_seconds"] = round(time.perf_counter() - t2, 2)
    if any(not math.isfinite(v) for v in losses):
        raise ConfigError("tuned lens training diverged (non-finite KL); lower lr")
    return lens
