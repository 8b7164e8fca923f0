"""``probekit`` command line: ``extract | info | fit | attribute | report | run``.

Bad input (an unknown model or dataset spec, a layer out of range, a missing column, an empty
dataset, a folder holding another cache, ...) ends with one line on stderr and exit code 2; set
``PROBEKIT_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: reported in one line, exit code 2."""


def _layers_arg(text: str | None) -> Any:
    """``"all"``/None -> None; ``"4"`` -> 4 (the last 4); ``"0,3,-1"`` -> [0, 3, -1]; names kept."""
    if text is None or text == "all":
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if len(parts) == 1 and parts[0].isdigit():
        return int(parts[0])
    return [int(p) if p.lstrip("-").isdigit() else p for p in parts]


def _add_common_extract(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="hf:NAME, timm:NAME, bundled:minilm-l6, bundled:efficientnet-lite0, or a directory")
    p.add_argument("--data", required=True, help="hf:NAME, csv:PATH, imagefolder:DIR, bundled:vader-valence, bundled:mnist")
    p.add_argument("--split", default=None, help="dataset split (hf: and bundled:mnist)")
    p.add_argument("--text-column", default=None)
    p.add_argument("--label-column", default=None)
    p.add_argument("--limit", type=int, default=None, help="use at most this many samples (stratified)")
    p.add_argument("--layers", default=None, help="all (default), N (last N), 0,3,-1, or module globs like 'blocks.*.norm2'")
    p.add_argument("--pooling", default=None, help="cls, mean, last, cls+mean (default: the model's)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=4096)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "medium", "bf16"])
    p.add_argument("--checkpoint", default=None, help="local weights for a timm model")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--out", required=True, help="cache folder")


def cmd_extract(args: argparse.Namespace) -> int:
    from .data import load_data
    from .extract import extract
    from .models import load_model

    data = load_data(args.data, split=args.split, text_column=args.text_column,
                     label_column=args.label_column, limit=args.limit)
    kwargs = {"checkpoint": args.checkpoint} if args.checkpoint else {}
    model = load_model(args.model, trust_remote_code=args.trust_remote_code, **kwargs)
    cache = extract(model, data, args.out, layers=_layers_arg(args.layers), pooling=args.pooling,
                    batch_size=args.batch_size, shard_size=args.shard_size, device=args.device,
                    dtype=args.dtype, precision=args.precision)
    print(cache)
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
    print(f"  dataset    {m['dataset']['name']}  n={len(cache)}  classes={', '.join(cache.label_names)}")
    print(f"  layers     {', '.join(f'{n}:{d}' for n, d in zip(cache.layer_names, cache.dims))}")
    print(f"  poolings   {', '.join(cache.poolings)}   dtype {m['dtype']}   precision {m.get('precision')}")
    print(f"  shards     {m['n_shards']} x {m['shard_size']}   fingerprint {m['fingerprint'][:16]}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probekit",
        description="Look inside frozen pretrained models: record layers, train probes, attribute, report.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"probekit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("extract", help="record pooled layers of a dataset into a cache")
    _add_common_extract(p)
    p.set_defaults(fn=cmd_extract)

    p = sub.add_parser("info", help="describe a cache")
    p.add_argument("cache")
    p.add_argument("--json", action="store_true", help="print the manifest")
    p.set_defaults(fn=cmd_info)

    from .pipeline import add_pipeline_commands

    add_pipeline_commands(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from .cache import CacheError
    from .data import DataError
    from .models import ModelError

    return (UsageError, CacheError, DataError, ModelError, IndexError, ValueError,
            FileNotFoundError, NotADirectoryError, KeyError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``probekit`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        print("probekit: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as err:
        if os.environ.get("PROBEKIT_DEBUG"):
            raise
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, KeyError):
            msg = f"missing key {msg}"
        print(f"probekit {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
