"""Which modules are "the layers" of a model, and one meaning for ``layers=`` everywhere.

Index convention:

* Transformers (HF and timm ViTs): layer 0 is the embedding output (HF ``hidden_states[0]``;
  timm: tokens after patch embedding, position embedding and ``norm_pre``), layers 1..L are the
  block outputs (the residual stream). For HF models whose ``hidden_states[L]`` is taken after a
  final norm (GPT-2's ``ln_f``, Llama's ``norm``), layer L is that norm's output, so that
  recorded layer l always equals ``output_hidden_states[l]`` (Mamba and RWKV, whose
  ``hidden_states`` leave out the embeddings: ``hidden_states[l - 1]`` for ``0 < l < L``).
* CNNs (timm): their stages, as ``model.feature_info`` names them.

Selections follow timm's ``feature_take_indices``: ``None`` = all, an int n = the last n, a list
of ints = those indices (negatives count from the end). Strings select modules by name or glob
(``"blocks.*.norm2"``).

On the command line and in config files a selection is written as text and read by
:func:`parse_layers` (``"all"``, ``"4"``, ``"0,3,-1"``, ``"blocks.*.norm2"``).

A bad selection raises :class:`~probekit.errors.ConfigError` (the out-of-range and wrong-type
cases are also ``IndexError`` / ``TypeError``, as before). This module imports neither torch nor
numpy, so the CLI can parse and check ``--layers`` before loading anything heavy.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = ["LayerSpec", "parse_layers", "resolve_indices", "select_layers", "glob_modules"]


class LayerIndexError(ConfigError, IndexError):
    """A layer index outside the model's range."""


class LayerTypeError(ConfigError, TypeError):
    """A ``layers=`` value of the wrong type."""


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def parse_layers(text: Any) -> Any:
    """Read a ``--layers`` value: ``"all"``/None -> None; ``"4"`` -> 4 (the last 4);
    ``"0,3,-1"`` -> ``[0, 3, -1]``; names and globs kept (``"blocks.*.norm2"``).

    Non-string values (already parsed, e.g. from a YAML list) are returned unchanged.

    Raises:
        ConfigError: an empty selection.
    """
    if not isinstance(text, str):
        return text
    if text.strip() == "all":
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"--layers {text!r} selects nothing; give all, N, 0,3,-1, or names")
    if len(parts) == 1 and parts[0].isdigit():
        return int(parts[0])
    return [int(p) if p.lstrip("-").isdigit() else p for p in parts]


def check_layers(selection: Any) -> None:
    """Check the shape of a selection before any model is loaded (ConfigError if malformed)."""
    if selection is None or isinstance(selection, str):
        return
    if _is_int(selection):
        if int(selection) < 1:
            raise ConfigError(
                f"layers={selection} asks for the last {selection} layers; give N >= 1"
            )
        return
    if not isinstance(selection, (list, tuple)) or not selection:
        raise ConfigError(
            f"layers must be all, N, a list of indices and/or names; got {selection!r}"
        )
    for item in selection:
        if not (_is_int(item) or isinstance(item, str)):
            raise ConfigError(f"layer selections are ints or names, got {item!r}")


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
        channels_last: the module returns a feature map as ``(B, H, W, C)`` (timm Swin, SwinV2,
            MambaOut: the model's ``output_fmt`` is ``NHWC``), not ``(B, C, H, W)``.
    """

    name: str
    module: str
    io: str = "output"
    dim: int | None = None
    channels_last: bool = False


def resolve_indices(selection: Any, n: int, names: Sequence[str] | None = None) -> list[int]:
    """Resolve a ``layers=`` selection to positions in ``range(n)``, timm style.

    Args:
        selection: ``None`` (all), an int ``k`` (the last ``k``), a list/tuple of ints (negatives
            count from the end) and/or names (glob patterns like ``"blocks.*"`` allowed), or a
            single name.
        n: number of recorded layers.
        names: the ``n`` layer names, for name selection.

    Returns:
        The positions, in the order given (a glob expands in recorded order).

    Raises:
        ConfigError: an int ``k`` outside ``1..n``, an unknown name, an empty selection; a list
            index outside ``-n..n-1`` (also an ``IndexError``); anything else (also a
            ``TypeError``).
    """
    if selection is None:
        return list(range(n))
    if _is_int(selection):
        k = int(selection)
        if not 1 <= k <= n:
            raise ConfigError(
                f"layers={k} asks for the last {k} layers; valid: 1..{n} "
                f"(or a list of indices in -{n}..{n - 1}, or names)"
            )
        return list(range(n - k, n))
    if isinstance(selection, str):
        selection = [selection]
    if hasattr(selection, "tolist") and not isinstance(selection, (list, tuple)):
        selection = selection.tolist()  # a numpy array or a tensor
    if not isinstance(selection, (list, tuple, range)):
        raise LayerTypeError(
            f"layers must be None, an int, a name, or a list of indices/names; "
            f"got {type(selection).__name__}"
        )
    out: list[int] = []
    for item in selection:
        if _is_int(item):
            j = int(item)
            if not -n <= j < n:
                raise LayerIndexError(
                    f"layer index {j} out of range for {n} layers (valid: -{n}..{n - 1})"
                )
            out.append(j % n)
        elif isinstance(item, str):
            known = list(names or [])
            if item in known:
                out.append(known.index(item))
            elif any(ch in item for ch in "*?["):
                regex = _glob_regex(item)
                hits = [j for j, nm in enumerate(known) if regex.fullmatch(nm)]
                if not hits:
                    raise ConfigError(f"layer pattern {item!r} matches none of {known}")
                out.extend(hits)
            else:
                raise ConfigError(f"unknown layer {item!r}; recorded layers: {known}")
        else:
            raise LayerTypeError(f"layer selections are ints or names, got {item!r}")
    if not out:
        raise ConfigError("empty layer selection")
    return out


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


def select_layers(
    model: nn.Module, layers: Sequence[LayerSpec], selection: Selection
) -> list[LayerSpec]:
    """Pick the layers to record.

    Args:
        model: the model, for module-name selections.
        layers: the model's canonical layers (index 0..L).
        selection: ``None``, an int, a list of ints and/or layer names, or a module name / glob
            (``"blocks.*.norm2"``), which records those modules' outputs.

    Returns:
        The chosen layers, canonical layers first in index order, then named modules in model order.

    Raises:
        ConfigError: an index out of range (also an ``IndexError``), a name or glob matching
            no module.
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
                raise ConfigError(
                    f"no module matches {pattern!r}; layers are {layers[0].name}..{layers[-1].name}, "
                    "or give a module name such as "
                    f"{next((n for n, _ in model.named_modules() if n.count('.') == 2), 'blocks.0.norm1')!r}"
                )
            chosen.extend(LayerSpec(name=m, module=m) for m in matches)
    unique: dict[str, LayerSpec] = {}
    for spec in chosen:  # the first of each name, in order
        unique.setdefault(spec.name, spec)
    return list(unique.values())
