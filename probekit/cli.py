"""``probekit`` command line: ``extract | info | fit | attribute | report | layers | run | compare``.

Error contract: a user mistake (a :class:`~probekit.errors.ProbekitError`: an unknown model or
dataset spec, a layer out of range, a missing column, an empty dataset, a folder holding another
cache, an unknown head, ...) ends with one line on stderr and exit code 2 (set
``PROBEKIT_DEBUG=1`` for its traceback). Anything else is a bug in probekit: its traceback is
shown and the exit code is 1. Bad command-line syntax is argparse's usage error, exit code 2.

The parser imports nothing heavy: ``probekit --help`` and argument errors load neither torch nor
scikit-learn; the commands import what they use.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ProbekitError
from .runs.config import RunConfig, fields_named, parse_bool, run_options

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2
EXIT_BUG = 1


# ------------------------------------------------------------------------------- commands


EXTRACT_OPTIONS = (
    fields_named("model", "data")
    + run_options("data")
    + fields_named("layers", "pooling", "unit", "word_pooling", "stride", "batch_size")
    + fields_named("span_pooling", "template", "chat_template", "read", "shard_size")
    + fields_named("component")
    + fields_named("device")
    + fields_named("store_dtype", "precision")
    + run_options("model")
    + fields_named("plugins")
)
"""The run options of ``probekit extract``: the data, the recording and the model's loading."""
FIT_OPTIONS = fields_named(
    "probes", "seed", "test_size", "bootstrap", "memory_budget", "task", "control", "mdl", "plugins"
)
ATTRIBUTE_OPTIONS = fields_named("ablation", "memory_budget")
COMPARE_OPTIONS = fields_named("layers", "pooling")
LAYERS_OPTIONS = run_options("model") + fields_named("component")


def _given(args: argparse.Namespace, fields: Sequence[dataclasses.Field[Any]]) -> dict[str, Any]:
    """The run options among ``fields`` that were given on the command line (text)."""
    return {
        f.name: getattr(args, f.name) for f in fields if getattr(args, f.name, None) is not None
    }


def _config(args: argparse.Namespace, fields: Sequence[dataclasses.Field[Any]]) -> RunConfig:
    """The given options parsed and checked by their fields (the others at their defaults).

    Raises:
        ConfigError: a bad value, naming the option.
    """
    return RunConfig(**_given(args, fields))


def cmd_extract(args: argparse.Namespace) -> int:
    cfg = _config(args, EXTRACT_OPTIONS)  # every option checked before anything is loaded
    data_options = cfg.stage_options("data")
    model_options = cfg.stage_options("model")

    from .data import load_data
    from .models.loading import load_model
    from .recording.extraction import extract

    data = load_data(cfg.data, **data_options)
    model = load_model(cfg.model, **model_options)
    cache = extract(model, data, args.out, **cfg.stage_options("extract"))
    if data_options.get("target") == "regression":  # the targets beside the cache
        from .runs.folder import write_targets

        write_targets(args.out, data.targets, data.target_name, data.fingerprint)
    print(cache)
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    cfg = _config(args, LAYERS_OPTIONS)  # checked before loading
    model_options = cfg.stage_options("model")

    from .models.listing import format_layers, list_layers

    listing = list_layers(
        args.model, modules=args.modules, component=cfg.component, **model_options
    )
    print(format_layers(listing))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .cache import FeatureCache

    cache = FeatureCache.open(args.cache)
    if args.json:
        print(json.dumps(cache.manifest, indent=2))
        return 0
    m = cache.manifest
    print(cache)
    print(f"  model      {m['model'].get('id')}  ({m['model'].get('class')})")
    print(
        f"  dataset    {m['dataset']['name']}  n={len(cache)}  classes={', '.join(cache.label_names)}"
    )
    print(f"  layers     {', '.join(f'{n}:{d}' for n, d in zip(cache.layer_names, cache.dims))}")
    print(
        f"  poolings   {', '.join(cache.poolings)}   dtype {m['dtype']}   precision {m.get('precision')}"
    )
    if cache.unit != "sample":
        print(
            f"  unit       {cache.unit} rows ({m.get('word_pooling')} of sub-words) from "
            f"{m.get('n_inputs')} inputs; {m.get('info', {}).get('dropped_words', 0)} words dropped"
        )
    if m.get("component", "resid") != "resid":
        print(f"  component  {m['component']} (the term each block adds to the residual stream)")
    prompt = m.get("prompt")
    if prompt:
        chat = prompt.get("chat_template")
        print(
            f"  prompt     template {prompt.get('template')!r}   read {prompt.get('read')}   "
            f"chat template {'sha256 ' + chat[:12] if chat else 'none'}   "
            f"{m.get('info', {}).get('truncated_samples', 0)} texts cut to fit"
        )
    threads = f"   threads {m['threads']}" if m.get("threads") else ""
    print(
        f"  shards     {m['n_shards']} x {m['shard_size']}   fingerprint {m['fingerprint'][:16]}"
        f"{threads}"
    )
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from .cache import FeatureCache
    from .runs.config import CPU_PROBE_PARAMS
    from .runs.extract import validate_run
    from .runs.fit import fit_stage
    from .runs.folder import write_config
    from .runs.task import get_task

    out = Path(args.out)
    cfg = RunConfig(
        name=out.name, out=str(out.parent), cache=str(args.cache), **_given(args, FIT_OPTIONS)
    )
    cfg.probe_params = {h: dict(v) for h, v in CPU_PROBE_PARAMS.items() if h in cfg.probes}
    validate_run(cfg)  # unknown heads fail before the cache is read
    cache = FeatureCache.open(args.cache)
    cfg.model = cache.manifest["model"].get("id", "")
    cfg.data = cache.manifest["dataset"]["name"]
    write_config(cfg, out)
    metrics = fit_stage(cache, cfg)
    task = get_task(cfg.task)
    print(task.summary_header(metrics))
    for head, e in metrics["heads"].items():
        print(task.summary_row(head, e))
    rows = metrics["heads"].get("linear", {}).get("per_layer", [])
    if rows and "selectivity" in rows[0]:
        top = max(rows, key=lambda r: r["selectivity"])
        print(
            f"most selective layer (linear probe): {top['layer']}  selectivity "
            f"{top['selectivity']:.3f} (accuracy {top['accuracy']:.3f}, control "
            f"{top['control_accuracy']:.3f})"
        )
    if "mdl" in metrics:
        top = max(metrics["mdl"]["layers"], key=lambda r: r["compression"])
        print(
            f"shortest online code (MDL): {top['layer']}  {top['online_bits']:.1f} bits, "
            f"compression {top['compression']:.2f}"
        )
    return 0


def cmd_attribute(args: argparse.Namespace) -> int:
    from .report.html import write_figures
    from .runs.attribute import attribute_stage

    summary = attribute_stage(
        args.run_dir, ablation=args.ablation, memory_budget=args.memory_budget
    )
    write_figures(args.run_dir)
    print(f"attributed {', '.join(summary['heads'])} in {Path(args.run_dir) / 'attribution'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report.html import write_report

    print(write_report(args.run_dir))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .runs.compare import compare_caches

    cfg = _config(args, COMPARE_OPTIONS)
    matrix, paths = compare_caches(
        args.cache_a, args.cache_b, args.out, args.method, layers=cfg.layers, pooling=cfg.pooling
    )
    print(
        f"{args.method} similarity {matrix.shape[0]} x {matrix.shape[1]} layers -> "
        + ", ".join(str(p) for p in paths)
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import resolve_configs, run_one
    from .runs.summary import summary_table

    options = _given(args, run_options())
    if args.config is None and set(options) <= {"out"}:
        configs = resolve_configs(None)  # the bundled demos
        configs = [RunConfig.from_dict({**c.to_dict(), **options}) for c in configs]
    else:
        configs = resolve_configs(args.config, **options)  # every run checked before any work
    for cfg in configs:
        run_dir = run_one(cfg)
        print(summary_table(run_dir))
    return 0


# ------------------------------------------------------------------------------- parser


def add_run_options(
    p: argparse.ArgumentParser,
    fields: Sequence[dataclasses.Field[Any]] | None = None,
    *,
    required: Sequence[str] = (),
    defaults: dict[str, str] | None = None,
) -> None:
    """One ``--flag`` per :class:`~probekit.runs.RunConfig` field (text, parsed by the field);
    ``fields`` picks some (default: all), ``required`` names the flags this command needs and
    ``defaults`` says what a flag defaults to where this command differs from the field
    (``{"ablation": "the run's"}``)."""
    for f in run_options() if fields is None else fields:
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()  # type: ignore[operator]
        shown = (
            ",".join(default)
            if isinstance(default, list)
            else json.dumps(default)
            if isinstance(default, (dict, bool))
            else default
        )
        help_text = f.metadata.get("help", "")
        if defaults and f.name in defaults:
            help_text = re.sub(r" ?\(default[^)]*\)", "", help_text)
            help_text += f" (default: {defaults[f.name]})"
        elif f.name in required:
            pass
        elif "default" not in help_text and default is not None:
            help_text += f" (default: {shown})"
        help_text = help_text.replace("%", "%%")
        choices = f.metadata.get("choices")
        flag = f"--{f.name.replace('_', '-')}"
        if f.metadata.get("parse") is parse_bool:  # --flag alone means true; --flag false too
            p.add_argument(
                flag,
                dest=f.name,
                default=None,
                nargs="?",
                const="true",
                metavar="true|false",
                help=help_text,
            )
            continue
        p.add_argument(
            flag,
            dest=f.name,
            default=None,
            required=f.name in required,
            choices=choices,
            metavar=None if choices else f.name.upper(),
            help=help_text,
        )


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="probekit",
        description="Look inside frozen pretrained models: record layers, train probes, attribute, report.",
    )
    parser.add_argument("--version", action="version", version=f"probekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="record pooled layers of a dataset into a cache")
    add_run_options(p, EXTRACT_OPTIONS, required=("model", "data"))
    p.add_argument("--out", required=True, help="cache folder")
    p.set_defaults(fn=cmd_extract)

    p = sub.add_parser("info", help="describe a cache")
    p.add_argument("cache")
    p.add_argument("--json", action="store_true", help="print the manifest")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("fit", help="train probe heads on a cache; write metrics.json/csv")
    p.add_argument("--cache", required=True, help="the feature cache to train on")
    p.add_argument("--out", required=True, help="the run folder to write")
    add_run_options(p, FIT_OPTIONS)
    p.set_defaults(fn=cmd_fit)

    p = sub.add_parser("attribute", help="layer attribution of a run's heads on its test split")
    p.add_argument("run_dir")
    add_run_options(
        p,
        ATTRIBUTE_OPTIONS,
        defaults={
            "ablation": "the run's",
            "memory_budget": "the run's memory_budget, else half the available RAM",
        },
    )
    p.set_defaults(fn=cmd_attribute)

    p = sub.add_parser("report", help="write RUN_DIR/report.html")
    p.add_argument("run_dir")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("compare", help="layer similarity (CKA/RSA) within one cache or between two")
    p.add_argument("cache_a")
    p.add_argument(
        "cache_b",
        nargs="?",
        default=None,
        help="a second cache on the same samples (default: CACHE_A with itself)",
    )
    p.add_argument("--out", required=True, help="folder for the CSV, safetensors and heatmap")
    p.add_argument("--method", default="cka", choices=["cka", "cka-debiased", "rsa"])
    add_run_options(p, COMPARE_OPTIONS, defaults={"pooling": "cls if recorded"})
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("layers", help="list a model's recordable layers (what --layers takes)")
    p.add_argument(
        "model",
        help="hf:NAME, timm:NAME, bundled:minilm-l6, bundled:efficientnet-lite0, or a directory",
    )
    p.add_argument(
        "--modules",
        action="store_true",
        help="also print the module tree, one row per glob, with output shapes",
    )
    add_run_options(p, LAYERS_OPTIONS)
    p.set_defaults(fn=cmd_layers)

    p = sub.add_parser(
        "run", help="extract -> fit -> attribute -> report (bundled demos without a config)"
    )
    p.add_argument(
        "config", nargs="?", default=None, help="YAML or TOML file with the options below"
    )
    add_run_options(p)
    p.set_defaults(fn=cmd_run)
    return parser


REFERENCE_COMMAND = (
    "python -c \"from probekit.cli import config_reference; print(config_reference(), end='')\" "
    "> docs/configuration.md"
)


def config_reference() -> str:
    """``docs/configuration.md``: every :class:`~probekit.runs.RunConfig` field as a config key,
    with its flag, default, allowed values, the loader it goes to and the subcommands that take
    it (read off :func:`build_parser`, so the page cannot drift from the CLI)."""
    commands: dict[str, list[str]] = {}
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            commands.setdefault(action.dest, []).append(name)
    loaders = {"data": "load_data", "model": "load_model", "extract": "extract"}

    def cell(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Configuration reference",
        "",
        "Every option of a run: a key of a YAML/TOML config, a `--flag` of the subcommands listed,",
        "and a keyword of `probekit.run`. Generated from `probekit.runs.RunConfig`; do not edit.",
        f"Regenerate with `{REFERENCE_COMMAND}`.",
        "",
        "| key | flag | default | values | goes to | subcommands | meaning |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in run_options():
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()  # type: ignore[operator]
        shown = json.dumps(default) if not isinstance(default, str) else default
        choices = f.metadata.get("choices")
        parse = f.metadata.get("parse")
        values = (
            ", ".join(map(str, choices))
            if choices
            else {parse_bool: "true / false", int: "integer", float: "number"}.get(parse, "")
            if parse is not None
            else "text"
        )
        if not values and parse is not None:
            values = parse.__name__.removeprefix("parse_").replace("_", " ")
        stage = f.metadata.get("stage")
        goes = f"`{loaders[stage]}`" if stage else "the run"
        cmds = ", ".join(sorted(commands.get(f.name, [])))
        flag = f"`--{f.name.replace('_', '-')}`"
        lines.append(
            f"| `{f.name}` | {flag} | `{cell(shown)}` | {cell(values)} | {goes} | {cmds} "
            f"| {cell(f.metadata.get('help', ''))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``probekit`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    formatwarning = warnings.formatwarning
    if not os.environ.get("PROBEKIT_DEBUG"):  # one line per warning, as errors are printed
        warnings.formatwarning = _one_line_warning(args.command)
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        _stderr_line("probekit: interrupted")
        return 130
    except BrokenPipeError:  # the reader went away (``probekit layers MODEL | head``)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ProbekitError as err:
        if os.environ.get("PROBEKIT_DEBUG"):
            raise
        text = str(err).strip()
        msg = text.splitlines()[0] if text else type(err).__name__
        _stderr_line(f"probekit {args.command}: error: {msg}")
        return EXIT_USAGE
    except Exception:
        traceback.print_exc()
        _stderr_line(
            f"probekit {args.command}: internal error (a bug in probekit; the traceback "
            "above says where)"
        )
        return EXIT_BUG
    finally:
        warnings.formatwarning = formatwarning


def _stderr_line(line: str) -> None:
    """Write one line to stderr in one call: under ``python -u`` (or ``PYTHONUNBUFFERED``) ``print``
    writes the text and its newline separately, and the lines of two torchrun ranks interleave."""
    sys.stderr.write(f"{line}\n")
    sys.stderr.flush()


def _one_line_warning(command: str) -> Any:
    """``warnings.formatwarning`` for the CLI: ``probekit CMD: warning: first line``, without the
    source line that Python's default shows (``PROBEKIT_DEBUG=1`` keeps the default)."""

    def fmt(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        line: str | None = None,
    ) -> str:
        text = str(message).strip().splitlines()
        return f"probekit {command}: warning: {text[0] if text else category.__name__}\n"

    return fmt


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
