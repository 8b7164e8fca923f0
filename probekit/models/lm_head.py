"""The unembedding (LM head) and final norm of an ``hf:`` causal decoder, for the logit and tuned
lenses.

probekit records the base model (``AutoModel``: ``LlamaModel``, ``GPT2Model``, ...); the LM head
lives in the causal-LM class around it. As transformers' ``AutoModelForCausalLM`` does, the head
is the input embedding when the config ties them (``tie_word_embeddings``), else the
checkpoint's ``lm_head.weight``; Gemma's ``final_logit_softcapping`` is applied after it. Only a
checkpoint saved from a causal LM (its config's ``architectures`` names a ``...ForCausalLM`` or
``...LMHeadModel``) has a head; any other gives none.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .bundled_llm import TiedUnembedding

__all__ = ["SoftcappedUnembedding", "causal_lm_head"]

FINAL_NORMS = ("norm", "ln_f", "final_layernorm", "norm_f")
"""Attribute names of a base decoder's final norm (Llama/Qwen/Gemma, GPT-2, OPT/Phi, Mamba)."""


class SoftcappedUnembedding(nn.Module):
    """``cap * tanh(head(h) / cap)`` (Gemma 2's ``final_logit_softcapping``)."""

    def __init__(self, head: nn.Module, cap: float) -> None:
        super().__init__()
        self.head, self.cap = head, float(cap)

    def forward(self, hidden: Tensor) -> Tensor:
        out: Tensor = self.head(hidden)
        return torch.tanh(out / self.cap) * self.cap


def _has_lm_head(config: Any) -> bool:
    names = getattr(config, "architectures", None) or []
    return any(n.endswith(("ForCausalLM", "LMHeadModel")) for n in names)


def _safetensors_files(name: str, revision: str | None) -> list[Path]:
    """The checkpoint's safetensors files (one, or the shards of an index), local or cached."""
    local = Path(name)

    def find(fname: str) -> Path | None:
        if local.is_dir():
            return local / fname if (local / fname).is_file() else None
        from transformers.utils import cached_file

        try:
            got = cached_file(
                name, fname, revision=revision, _raise_exceptions_for_missing_entries=False
            )
        except (OSError, ValueError):
            return None
        return Path(got) if got else None

    single = find("model.safetensors")
    if single is not None:
        return [single]
    index = find("model.safetensors.index.json")
    if index is None:
        return []
    shard = json.loads(index.read_text()).get("weight_map", {}).get("lm_head.weight")
    path = find(shard) if shard else None
    return [path] if path is not None else []


def _lm_head_weight(name: str, revision: str | None) -> Tensor | None:
    from safetensors import safe_open

    for path in _safetensors_files(name, revision):
        with safe_open(str(path), framework="pt") as f:
            if "lm_head.weight" in f.keys():  # noqa: SIM118 - safe_open has no __contains__
                return f.get_tensor("lm_head.weight")
    return None


def causal_lm_head(
    model: nn.Module,
    config: Any,
    name: str,
    *,
    revision: str | None = None,
    pretrained: bool = True,
    checkpoint: str | None = None,
) -> tuple[nn.Module | None, nn.Module | None]:
    """``(unembed, final_norm)`` of the base decoder ``model`` loaded from ``name``, or
    ``(None, None)`` where the checkpoint has no LM head (or its untied head cannot be read:
    a random init, or ``checkpoint`` weights that replace the model's).

    ``unembed`` maps ``(..., D)`` normed states to ``(..., V)`` logits.
    """
    norm = next(
        (getattr(model, a) for a in FINAL_NORMS if isinstance(getattr(model, a, None), nn.Module)),
        None,
    )
    if norm is None or not _has_lm_head(config):
        return None, None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    embedding = model.get_input_embeddings()  # type: ignore[operator]
    head: nn.Module
    if getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False)):
        head = TiedUnembedding(embedding)
    elif not pretrained or checkpoint is not None:
        return None, None
    else:
        weight = _lm_head_weight(name, revision)
        if weight is None:
            return None, None
        ref = embedding.weight
        head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
        head.weight = nn.Parameter(weight.to(ref.device, ref.dtype), requires_grad=False)
        head.eval()
    cap = getattr(text, "final_logit_softcapping", None)
    if cap:
        head = SoftcappedUnembedding(head, cap)
    return head, norm
