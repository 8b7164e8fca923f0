"""Residual-stream components: what each block of a decoder LM adds to its residual stream.

A pre-norm decoder block ``l`` (1..L) updates the stream twice::

    h = hidden[l - 1] + attn[l]       attn[l]: the attention sub-block's output
    hidden[l] = h + mlp[l]            mlp[l]:  the MLP sub-block's output

so ``hidden[l] == hidden[l - 1] + attn[l] + mlp[l]``, where ``hidden`` is the ``resid``
component (probekit's canonical layers, ``output_hidden_states`` up to a final norm on the last
one). ``component="attn"`` / ``"mlp"`` records the added term itself, as it is added, by hooking
the module whose output that term is (a tuple's first element: the attention output, not its
weights):

* GPT-2 (``gpt2``): ``h.{i}.attn`` (after ``c_proj`` and the residual dropout) and ``h.{i}.mlp``.
* Llama, Mistral, Qwen2 (``llama``, ``mistral``, ``qwen2``): ``layers.{i}.self_attn`` and
  ``layers.{i}.mlp``.
* Gemma 3 (``gemma3_text``): ``layers.{i}.post_attention_layernorm`` and
  ``layers.{i}.post_feedforward_layernorm``: Gemma norms each sub-block's output before adding it.

The layers of a component are named ``attn.1`` .. ``attn.L`` (``mlp.1`` .. ``mlp.L``) alike on
every architecture; ``attn.l`` is block ``l``'s term, the block whose output is ``layers.l``.
There is no layer 0 (the embeddings add no attention or MLP term). In ``layers=`` an index ``l``
means block ``l`` (1..L; -1 is the last block), a count ``n`` the last ``n`` blocks, and names
and globs (``"attn.*"``, ``"mlp.3"``) select by name; module names and globs record those modules
as for ``resid``.

This module imports no torch at import time: the CLI reads :data:`COMPONENTS`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .layers import LayerIndexError, LayerSpec, Selection, _glob_regex, _is_int, select_layers

if TYPE_CHECKING:  # pragma: no cover
    from .loading import LoadedModel

__all__ = [
    "COMPONENTS",
    "COMPONENT_ARCHITECTURES",
    "check_component",
    "component_layers",
    "select_component",
]

COMPONENTS = ("resid", "attn", "mlp")
"""``resid``: the residual stream (the hidden states); ``attn`` / ``mlp``: the attention / MLP
sub-block's output as added to the stream, per block."""

# model_type -> (display name, the block's module whose output is the attention term, the MLP's)
_TERMS: dict[str, tuple[str, str, str]] = {
    "gpt2": ("GPT-2", "attn", "mlp"),
    "llama": ("Llama", "self_attn", "mlp"),
    "mistral": ("Mistral", "self_attn", "mlp"),
    "qwen2": ("Qwen2", "self_attn", "mlp"),
    "gemma3_text": ("Gemma 3", "post_attention_layernorm", "post_feedforward_layernorm"),
}
COMPONENT_ARCHITECTURES = {kind: terms[0] for kind, terms in _TERMS.items()}
"""The ``model_type`` values whose ``attn`` / ``mlp`` components probekit records, and their
names."""


def check_component(component: Any) -> str:
    """``component`` itself when it is one of :data:`COMPONENTS`, else a ConfigError."""
    if component not in COMPONENTS:
        raise ConfigError(f"unknown component {component!r}; choose from {', '.join(COMPONENTS)}")
    return str(component)


def _supported() -> str:
    names = list(dict.fromkeys(COMPONENT_ARCHITECTURES.values()))
    return ", ".join(names[:-1]) + " and " + names[-1]


def component_layers(model: LoadedModel, component: str) -> list[LayerSpec]:
    """The layers of one component of ``model``, in block order.

    Args:
        model: a loaded model.
        component: ``"resid"`` (the canonical layers ``layers.0..L``, unchanged), ``"attn"`` or
            ``"mlp"``.

    Returns:
        ``model.layers`` for ``resid``; else ``L`` specs named ``{component}.1`` ..
        ``{component}.L``, each hooking the output of the module that block ``l`` adds to the
        stream (a ``(B, T, D)`` tensor, ``D`` the stream's width).

    Raises:
        ConfigError: an unknown component; ``attn`` / ``mlp`` of an image model or of an
            architecture other than GPT-2, Llama, Mistral, Qwen2 and Gemma 3.
    """
    check_component(component)
    if component == "resid":
        return list(model.layers)
    if model.kind != "text":
        raise ConfigError(
            f"component={component} records a text decoder's sub-blocks; {model.spec} is an "
            f"{model.kind} model: use component=resid"
        )
    config = getattr(model.model, "config", None)
    kind = str(getattr(config, "model_type", "") or type(model.model).__name__)
    if kind not in _TERMS:
        raise ConfigError(
            f"component={component} is known for {_supported()} decoders, not {model.spec} "
            f"({kind}); use component=resid"
        )
    from .loading import _block_list

    prefix, blocks = _block_list(model.model, getattr(config, "num_hidden_layers", None))
    term = _TERMS[kind][1 if component == "attn" else 2]
    names = {name for name, _ in model.model.named_modules()}
    dim = model.layers[-1].dim
    specs = []
    for i in range(len(blocks)):
        module = f"{prefix}.{i}.{term}"
        if module not in names:
            raise ConfigError(
                f"component={component}: {model.spec} ({kind}) has no module {module!r}"
            )
        specs.append(LayerSpec(f"{component}.{i + 1}", module, dim=dim))
    return specs


def _block_positions(selection: Selection, component: str, names: Sequence[str]) -> Any:
    """A ``layers=`` selection over blocks 1..L as one over positions 0..L-1 of ``names``.

    Ints (and digit strings) are block numbers: ``l`` in 1..L is position ``l - 1``, negatives
    count from the end; globs over the component's names expand to their positions. Everything
    else (None, a count, names, module globs) is passed on as it is.
    """
    if selection is None or _is_int(selection):
        return selection
    items = [selection] if isinstance(selection, str) else list(selection)  # type: ignore[arg-type]
    n = len(names)
    out: list[Any] = []
    for item in items:
        text = item.strip() if isinstance(item, str) else None
        if _is_int(item) or (text is not None and text.lstrip("-").isdigit()):
            j = int(item)
            if j == 0:
                raise LayerIndexError(
                    f"component {component} has no layer 0 (the embeddings add no {component} "
                    f"term); its layers are blocks 1..{n}, -1 the last"
                )
            if not -n <= j <= n:
                raise LayerIndexError(
                    f"layer {j} out of range for component {component}: blocks 1..{n} "
                    f"(or -{n}..-1 from the end)"
                )
            out.append(j - 1 if j > 0 else j)
        elif text is not None and any(ch in text for ch in "*?[") and text not in names:
            regex = _glob_regex(text)
            hits = [p for p, name in enumerate(names) if regex.fullmatch(name)]
            out.extend(hits or [item])  # no hit: a module glob, for select_layers
        else:
            out.append(item)
    return out


def select_component(model: LoadedModel, component: str, selection: Selection) -> list[LayerSpec]:
    """The layers to record of one component: :func:`select_layers` over its layers.

    For ``resid`` exactly ``select_layers(model.model, model.layers, selection)``. For ``attn`` /
    ``mlp`` an index ``l`` is block ``l`` (1..L; negatives from the end; 0 is refused), a count
    ``n`` the last ``n`` blocks, ``"attn.*"`` every block; module names and globs as for
    ``resid``.

    Raises:
        ConfigError: as :func:`component_layers`; an index outside the blocks (also an
            ``IndexError``), a name or glob matching nothing.
    """
    specs = component_layers(model, component)
    if component != "resid":
        selection = _block_positions(selection, component, [s.name for s in specs])
    return select_layers(model.model, specs, selection)
