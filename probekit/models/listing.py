"""What a model offers to record: ``list_layers(model)`` and its text form for ``probekit layers``.

The recordable layers are probekit's canonical ones (index, name, hooked module, width). With
``modules=True`` the whole module tree comes too, one row per *glob*: modules repeated in a
``ModuleList`` (``encoder.layer.0`` ... ``encoder.layer.5``) collapse into the glob that selects
all of them (``encoder.layer.*``), which is what ``layers=`` / ``--layers`` takes.

Example:
    >>> print(list_layers("bundled:minilm-l6"))                 # doctest: +SKIP
    >>> print(list_layers("timm:resnet18", modules=True, pretrained=False))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ModelError
from .components import check_component, component_layers
from .hooks import _first_tensor
from .layers import glob_modules
from .loading import LoadedModel, load_model

__all__ = ["LayerListing", "format_layers", "list_layers"]


@dataclass
class LayerListing:
    """The recordable layers of a model and, optionally, its module tree.

    Attributes:
        spec: the model spec.
        model_class: the model's class name.
        layers: one dict per canonical layer: ``index``, ``name``, ``module``, ``io``
            (``"output"`` or ``"input"``), ``width``.
        modules: with ``modules=True``, one dict per glob in model order: ``glob``, ``type``,
            ``count`` (modules it selects), ``depth``, ``params`` (of one of them), ``output``
            (output shape of the first one on a one-sample input, or ``None`` if it did not
            run), ``layers`` (canonical layer names it carries); else ``None``.
    """

    spec: str
    model_class: str
    layers: list[dict[str, Any]]
    modules: list[dict[str, Any]] | None = field(default=None)

    def __str__(self) -> str:
        return format_layers(self)


def _globs(model: torch.nn.Module) -> dict[str, str]:
    """``{module name: glob}``: an index part becomes ``*`` when every indexed sibling has the
    same type (the blocks of a ``ModuleList``), and stays when they differ (a ``Sequential`` of a
    conv and a norm)."""
    modules = dict(model.named_modules())
    out: dict[str, str] = {}
    for name in modules:
        if not name:
            continue
        parent, _, last = name.rpartition(".")
        head = out.get(parent, parent)
        if last.isdigit():
            kinds = {type(m) for n, m in modules[parent].named_children() if n.isdigit()}
            last = "*" if len(kinds) == 1 else last
        out[name] = f"{head}.{last}" if head else last
    return out


def _output_shapes(lm: LoadedModel, names: list[str]) -> dict[str, tuple[int, ...]]:
    """Output shape of each named module on the model's one-sample example input."""
    if lm.example is None:
        return {}
    modules = dict(lm.model.named_modules())
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []

    def hook(name: str) -> Any:
        def record(module: Any, args: Any, output: Any) -> None:
            try:
                shapes.setdefault(name, tuple(_first_tensor(output).shape))
            except TypeError:  # returns no tensor (a cache object, None)
                pass

        return record

    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(hook(name)))
        with torch.no_grad():
            lm.forward({k: v.to(lm.device) for k, v in lm.example.items()})
    finally:
        for h in handles:
            h.remove()
    return shapes


def list_layers(
    model: LoadedModel | str, modules: bool = False, component: str = "resid", **load_kwargs: Any
) -> LayerListing:
    """The layers a model offers to record.

    Args:
        model: a :class:`~probekit.models.LoadedModel` or a spec for :func:`load_model`.
        modules: also list the module tree, one row per glob, with the modules' output shapes
            from one forward pass on a one-sample input.
        component: ``"resid"`` (the canonical layers ``layers.0..L``), ``"attn"`` or ``"mlp"``
            (the blocks' terms ``attn.1..L`` / ``mlp.1..L``, indexed 1..L as ``layers=``
            takes them; see :mod:`probekit.models.components`).
        **load_kwargs: passed to :func:`load_model` when ``model`` is a spec (``checkpoint``,
            ``revision``, ``weights="random"``, ...).

    Returns:
        A :class:`LayerListing`; ``str(listing)`` is the text :func:`format_layers` makes.

    Raises:
        ModelError: ``model`` is neither a LoadedModel nor a loadable spec.
        ConfigError: an unknown component, or one the model does not have.
    """
    check_component(component)
    if isinstance(model, str):
        lm = load_model(model, **load_kwargs)
    elif isinstance(model, LoadedModel):
        lm = model
    else:
        raise ModelError(
            f"list_layers takes a LoadedModel or a model spec, got {type(model).__name__}"
        )
    first = 0 if component == "resid" else 1  # a component's layers are blocks 1..L
    rows = [
        {"index": i, "name": s.name, "module": s.module, "io": s.io, "width": s.dim}
        for i, s in enumerate(component_layers(lm, component), start=first)
    ]
    tree = None
    if modules:
        globs = _globs(lm.model)
        by_glob: dict[str, dict[str, Any]] = {}
        for name, mod in lm.model.named_modules():
            if not name:
                continue
            g = globs[name]
            if g not in by_glob:
                by_glob[g] = {
                    "glob": g,
                    "type": type(mod).__name__,
                    "first": name,
                    "depth": name.count("."),
                    "params": sum(p.numel() for p in mod.parameters()),
                }
        shapes = _output_shapes(lm, [row["first"] for row in by_glob.values()])
        tree = []
        for g, row in by_glob.items():
            carried = [
                s.name
                for s in lm.layers
                if s.io == "output" and globs.get(s.module) == g or s.module == g
            ]
            tree.append(
                {
                    "glob": g,
                    "type": row["type"],
                    "count": len(glob_modules(lm.model, g)),
                    "depth": row["depth"],
                    "params": row["params"],
                    "output": shapes.get(row["first"]),
                    "layers": carried,
                }
            )
    return LayerListing(
        spec=lm.spec, model_class=type(lm.model).__name__, layers=rows, modules=tree
    )


def _span(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}" if names else ""


def format_layers(listing: LayerListing) -> str:
    """The listing as text: a table of recordable layers, then (if present) the module tree.

    This is what ``probekit layers MODEL [--modules]`` prints.
    """
    lines = [f"{listing.spec} ({listing.model_class}): {len(listing.layers)} recordable layers"]
    mod_w = max([len(r["module"]) + (8 if r["io"] == "input" else 0) for r in listing.layers] + [6])
    name_w = max([len(r["name"]) for r in listing.layers] + [4])
    lines.append(f"{'index':>5}  {'name':<{name_w}}  {'module':<{mod_w}}  width")
    for r in listing.layers:
        module = r["module"] + (" (input)" if r["io"] == "input" else "")
        width = "?" if r["width"] is None else str(r["width"])
        lines.append(f"{r['index']:>5}  {r['name']:<{name_w}}  {module:<{mod_w}}  {width}")
    blocks = bool(listing.layers) and listing.layers[0]["index"] == 1  # a component's blocks
    lines.append(
        (
            "layers= / --layers takes block indices 1..L (-1 is the last), a count n (the last n), "
            if blocks
            else "layers= / --layers takes indices (-1 is the last), a count n (the last n), "
        )
        + "these names, or module names and globs"
        + (" (below)" if listing.modules else " (see --modules)")
    )
    if listing.modules:
        lines.append("")
        glob_w = max(len(r["glob"]) + 2 * r["depth"] for r in listing.modules)
        type_w = max(len(r["type"]) for r in listing.modules)
        lines.append(
            f"{'module glob':<{glob_w}}  {'type':<{type_w}}  {'count':>5}  {'params':>10}  output"
        )
        for r in listing.modules:
            shape = "-" if r["output"] is None else "(" + ", ".join(map(str, r["output"])) + ")"
            tag = f"  <- {_span(r['layers'])}" if r["layers"] else ""
            glob = "  " * r["depth"] + r["glob"]
            lines.append(
                f"{glob:<{glob_w}}  {r['type']:<{type_w}}  {r['count']:>5}  "
                f"{r['params']:>10,}  {shape}{tag}"
            )
    return "\n".join(lines)
