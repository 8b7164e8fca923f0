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
import sys
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._utils.plugins import import_plugins
from .errors import ProbekitError
from .models.layers import parse_layers
from .runs.config import RunConfig, parse_bool, parse_list, run_options, stage_options
from .runs.summary import summary_table

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2
EXIT_BUG = 1


# ------------------------------------------------------------------------------- commands


def _add_common_extract(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="hf:NAME, timm:NAME, bundled:minilm-l6, bundled:efficientnet-lite0, or a directory",
    )
    p.add_argument(
        "--data",
        required=True,
        help="hf:NAME, csv:PATH, imagefolder:DIR, bundled:vader-valence, bundled:mnist",
    )
    add_run_options(p, run_options("data"))
    p.add_argument(
        "--layers",
        default=None,
        help="all (default), N (last N), 0,3,-1, or module globs like 'blocks.*.norm2'",
    )
    p.add_argument(
        "--pooling",
        default=None,
        help="cls, mean, last, cls+mean or cls,mean (default: the model's)",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=4096)
    p.add_argument("--device", default=None)
    p.add_argument(
        "--store-dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="dtype the features are stored in; float16/bfloat16 halve disk and RAM "
        "(default: float32)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16", "bfloat16"],
        help="deprecated name of --store-dtype",
    )
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "medium", "bf16"])
    add_run_options(p, run_options("model"))
    p.add_argument("--out", required=True, help="cache folder")


def _given(args: argparse.Namespace, stage: str) -> dict[str, Any]:
    """The flags of one stage's run options that were given on the command line."""
    return {
        f.name: getattr(args, f.name)
        for f in run_options(stage)
        if getattr(args, f.name, None) is not None
    }


def cmd_extract(args: argparse.Namespace) -> int:
    from .recording.pooling import expand_poolings

    layers = parse_layers(args.layers)  # checked before anything is loaded
    if args.pooling is not None:
        expand_poolings(args.pooling)
    data_options = stage_options("data", _given(args, "data"))
    model_options = stage_options("model", _given(args, "model"))

    from .data import load_data
    from .models.loading import load_model
    from .recording.extraction import extract

    store_dtype = args.store_dtype or args.dtype or "float32"
    if args.dtype is not None:
        print("probekit extract: --dtype is deprecated; use --store-dtype", file=sys.stderr)
    data = load_data(args.data, **data_options)
    model = load_model(args.model, **model_options)
    cache = extract(
        model,
        data,
        args.out,
        layers=layers,
        pooling=args.pooling,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        device=args.device,
        store_dtype=store_dtype,
        precision=args.precision,
    )
    if data_options.get("target") == "regression":  # the targets beside the cache
        from .runs.folder import write_targets

        write_targets(args.out, data.targets, data.target_name, data.fingerprint)
    print(cache)
    return 0


def cmd_layers(args: argparse.Namespace) -> int:
    model_options = stage_options("model", _given(args, "model"))  # checked before loading

    from .models.listing import format_layers, list_layers

    print(format_layers(list_layers(args.model, modules=args.modules, **model_options)))
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
    print(f"  shards     {m['n_shards']} x {m['shard_size']}   fingerprint {m['fingerprint'][:16]}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from .cache import FeatureCache
    from .runs.config import CPU_PROBE_PARAMS
    from .runs.extract import validate_run
    from .runs.fit import fit_stage
    from .runs.folder import write_config

    out = Path(args.out)
    probes = [p.strip() for p in args.probe.split(",") if p.strip()]
    cfg = RunConfig(
        name=out.name,
        out=str(out.parent),
        probes=probes,
        seed=args.seed,
        test_size=args.test_size,
        bootstrap=args.bootstrap,
        cache=str(args.cache),
        fit_max_memory=args.max_memory,
        task=args.task,
        probe_params={h: dict(v) for h, v in CPU_PROBE_PARAMS.items() if h in probes},
        control=args.control,
        mdl=args.mdl,
    )
    validate_run(cfg)  # unknown heads fail before the cache is read
    cache = FeatureCache.open(args.cache)
    cfg.model = cache.manifest["model"].get("id", "")
    cfg.data = cache.manifest["dataset"]["name"]
    write_config(cfg, out)
    metrics = fit_stage(cache, cfg)
    if cfg.task == "regression":
        for head, e in metrics["heads"].items():
            lo, hi = e["r2_ci"]
            print(f"{head:16s} R2 {e['r2']:.3f} [{lo:.3f}, {hi:.3f}]  Spearman {e['spearman']:.3f}")
        return 0
    for head, e in metrics["heads"].items():
        lo, hi = e["balanced_accuracy_ci"]
        print(
            f"{head:16s} acc {e['accuracy']:.3f}  balanced {e['balanced_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]"
        )
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

    summary = attribute_stage(args.run_dir, ablation=args.ablation, max_memory=args.max_memory)
    write_figures(args.run_dir)
    print(f"attributed {', '.join(summary['heads'])} in {Path(args.run_dir) / 'attribution'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report.html import write_report

    print(write_report(args.run_dir))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .runs.compare import compare_caches

    layers = parse_layers(args.layers)
    matrix, paths = compare_caches(
        args.cache_a, args.cache_b, args.out, args.method, layers=layers, pooling=args.pooling
    )
    print(
        f"{args.method} similarity {matrix.shape[0]} x {matrix.shape[1]} layers -> "
        + ", ".join(str(p) for p in paths)
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import resolve_configs, run_one

    options = {
        f.name: getattr(args, f.name) for f in run_options() if getattr(args, f.name) is not None
    }
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
    p: argparse.ArgumentParser, fields: Sequence[dataclasses.Field[Any]] | None = None
) -> None:
    """One ``--flag`` per :class:`~probekit.runs.RunConfig` field (text, parsed by the field);
    ``fields`` picks some (default: all)."""
    for f in run_options() if fields is None else fields:
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            default = f.default_factory()  # type: ignore[misc]
        shown = (
            ",".join(default)
            if isinstance(default, list)
            else json.dumps(default)
            if isinstance(default, (dict, bool))
            else default
        )
        help_text = f.metadata.get("help", "")
        if "default" not in help_text and default is not None:
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
    _add_common_extract(p)
    add_run_options(p, [f for f in run_options() if f.name == "plugins"])
    p.set_defaults(fn=cmd_extract)

    p = sub.add_parser("info", help="describe a cache")
    p.add_argument("cache")
    p.add_argument("--json", action="store_true", help="print the manifest")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("fit", help="train probe heads on a cache; write metrics.json/csv")
    p.add_argument("--cache", required=True)
    add_run_options(p, [f for f in run_options() if f.name == "plugins"])
    p.add_argument(
        "--probe",
        default="linear,alf,laya,kcla,aila-attention",
        help="comma-separated heads (see probekit.list_probes())",
    )
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-size", type=float, default=0.2)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument(
        "--max-memory",
        default=None,
        metavar="SIZE",
        help="memory budget, e.g. 512MB or 4GiB (default: half the available RAM); "
        "a larger cache is trained out of core, reading rows from disk",
    )
    p.add_argument(
        "--task",
        default="classification",
        choices=["classification", "regression"],
        help="regression: continuous targets (the cache must be extracted with --task regression)",
    )
    p.add_argument(
        "--control",
        action="store_true",
        help="control task per layer of the linear probe: control accuracy and "
        "selectivity (Hewitt & Liang, 2019)",
    )
    p.add_argument(
        "--mdl",
        action="store_true",
        help="online-code MDL per layer on the train split (Voita & Titov, 2020)",
    )
    p.set_defaults(fn=cmd_fit)

    p = sub.add_parser("attribute", help="layer attribution of a run's heads on its test split")
    p.add_argument("run_dir")
    p.add_argument("--ablation", default=None, choices=["mean", "zero", "shuffle"])
    p.add_argument(
        "--max-memory",
        default=None,
        metavar="SIZE",
        help="memory budget, e.g. 512MB or 4GiB (default: the run's fit_max_memory, "
        "else half the available RAM); the test rows are read from disk in chunks "
        "that fit it",
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
    p.add_argument("--layers", default=None, help="all (default), N (last N), 0,3,-1 or names")
    p.add_argument("--pooling", default=None, help="cls, mean, cls+mean (default: cls if recorded)")
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
    add_run_options(p, run_options("model"))
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``probekit`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    formatwarning = warnings.formatwarning
    if not os.environ.get("PROBEKIT_DEBUG"):  # one line per warning, as errors are printed
        warnings.formatwarning = _one_line_warning(args.command)
    try:
        if getattr(args, "plugins", None) and args.command != "run":  # run: RunConfig imports them
            import_plugins(parse_list(args.plugins))
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
