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


def resolve_indices(selection: int | Sequence[int] | None, n: int) -> list[int]:
    """Resolve a timm-style selection over ``n`` items to sorted, unique, non-negative indices.

    Args:
        selection: ``None`` (all), an int k (the last k), or a sequence of ints (negatives from
            the end).
        n: how many items there are.

    Returns:
        The selected indices in increasing order.

    Raises:
        IndexError: an index or count outside ``[-n, n)`` / ``[1, n]``, naming the valid range.
    """
    if selection is None:
        return list(range(n))
    if isinstance(selection, bool):
        raise TypeError("layers must be None, an int or a list of ints, not a bool")
    if isinstance(selection, int):
        if not 1 <= selection <= n:
            raise IndexError(f"layers={selection} asks for the last {selection} of {n} layers; use 1..{n}")
        return list(range(n - selection, n))
    out = []
    for i in selection:
        if not -n <= int(i) < n:
            raise IndexError(f"layer index {i} is out of range: this model has layers 0..{n - 1} (or -{n}..-1)")
        out.append(int(i) % n)
    return sorted(set(out))


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
