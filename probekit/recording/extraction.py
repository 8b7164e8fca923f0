"""``extract(model, data, ...) -> FeatureCache``: record pooled layers of a whole dataset to disk.

Work is done shard by shard (``shard_size`` samples). On an accelerator the next batch is
preprocessed on a worker thread while the model runs the current one (on a CPU inline: the
forward pass already uses every core); pooled rows go into one preallocated buffer per key, and finished shards are
written by a writer thread while the next shard is computed, so the model is rarely idle. Shards
are written atomically: a killed run resumes at the first missing shard, and a finished cache
with the same fingerprint is returned without recomputing anything. Under ``torchrun`` each rank
computes its share of the shards into the same folder (:mod:`probekit.distributed`).

Numerics: the manifest records the resolved precision and the intra-op thread count of the
process that created the cache (``threads``); every later writer (each rank, a resume) runs its
CPU forward passes with that count, so a shard has the same bytes whichever process computed it.
Each shard's ``.json`` records the device type, precision and thread count it was computed with;
finishing a cache whose shards disagree warns and names them.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from .._utils.runtime import intra_op_threads, resolve_precision, usable_cores
from .._utils.transfer import to_host_all
from ..cache import CacheWriter, FeatureCache
from ..cache.files import kill_point
from ..data import Dataset, load_data
from ..errors import ConfigError, DataError
from ..models.components import check_component, select_component
from ..models.hooks import LayerRecorder
from ..models.layers import LayerSpec, Selection
from ..models.loading import LoadedModel, load_model
from .distributed import Ranks, join_ranks
from .options import PRECISIONS, STORE_DTYPES
from .pooling import model_poolings, pool
from .prompts import READ_KEY, PromptPlan, check_prompt_options, plan_prompts
from .units import SpanGroups, UnitPlan, plan_units, pool_spans, pool_units, unit_preprocess

__all__ = ["extract", "record", "PRECISIONS", "STORE_DTYPES"]


@contextlib.contextmanager
def precision_context(precision: str, device: torch.device) -> Iterator[None]:
    """Numerics of the forward pass.

    ``fp32``: plain float32. ``medium``: float32 weights, matmuls allowed to use bf16 passes
    (``torch.set_float32_matmul_precision("medium")``). ``bf16``: bfloat16 autocast. ``auto``:
    ``bf16`` where ``device`` computes bfloat16 natively, else ``fp32``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = resolve_precision(precision, device.type)
    old = torch.get_float32_matmul_precision()
    try:
        if precision == "medium":
            torch.set_float32_matmul_precision("medium")
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            yield
    finally:
        torch.set_float32_matmul_precision(old)


def _batched_inputs(
    model: LoadedModel,
    data: Dataset,
    start: int,
    stop: int,
    batch_size: int,
    pool_exec: ThreadPoolExecutor | None,
    plan: UnitPlan | None = None,
) -> Iterator[tuple[int, Any]]:
    """Yield ``(batch_start, inputs)``; with ``pool_exec`` the next batch is preprocessed while the
    caller computes (accelerators), without it inline (CPU). With a unit ``plan`` the inputs come
    with their row groups: ``(inputs, groups)``."""
    starts = list(range(start, stop, batch_size))
    units = None if plan is None else unit_preprocess(model, data, plan)

    def prep(s: int) -> Any:
        end = min(s + batch_size, stop)
        if units is not None:
            return units(s, end)
        return model.preprocess(data.get_items(range(s, end)))

    if pool_exec is None:  # CPU: the forward pass already uses every core; a second thread's
        for s in starts:  # torch ops would only start a competing OpenMP pool
            yield s, prep(s)
        return

    pending = pool_exec.submit(prep, starts[0]) if starts else None
    for k, s in enumerate(starts):
        assert pending is not None  # submitted for every start
        inputs = pending.result()
        pending = pool_exec.submit(prep, starts[k + 1]) if k + 1 < len(starts) else None
        yield s, inputs


def _forward_pooled(
    model: LoadedModel,
    recorder: LayerRecorder,
    inputs: dict[str, Tensor],
    poolings: list[str],
    device: torch.device,
    groups: list[np.ndarray] | SpanGroups | None = None,
) -> dict[str, Tensor]:
    """One forward pass; returns ``{"<layer>.<pooling>": (B, D) float32}``, or with ``groups``
    (a unit cache's rows, see :func:`~probekit.recording.units.pool_units`) ``(R, D)``. A prompt
    batch's read window (:data:`~probekit.recording.prompts.READ_KEY`, ``(B, T)``) is the mask
    the poolings see, in place of the attention mask."""
    window = inputs.get(READ_KEY)
    inputs = {k: v.to(device, non_blocking=True) for k, v in inputs.items() if k != READ_KEY}
    mask = inputs.get("attention_mask") if window is None else window.to(device)
    n_prefix = model.n_prefix_tokens
    channels_last = {spec.name for spec in recorder.specs if spec.channels_last}

    def transform(name: str, hidden: Tensor) -> dict[str, Tensor]:  # pooled where the block ran
        if isinstance(groups, SpanGroups):
            return {poolings[0]: pool_spans(hidden, groups)}
        if groups is not None:
            how = "first" if poolings[0] == "token" else poolings[0]
            return {poolings[0]: pool_units(hidden, groups, how)}
        m = mask.to(hidden.device) if mask is not None else None  # (device_map: any device)
        nhwc = name in channels_last
        return {p: pool(hidden, p, m, n_prefix, nhwc).float() for p in poolings}

    recorder.transform = transform
    records = recorder.run(model.forward, inputs)
    return {f"{name}.{p}": t for name, pooled in records.items() for p, t in pooled.items()}


class _ShardWriter:
    """A background thread writing finished shards; errors are re-raised in the caller."""

    def __init__(self, writer: CacheWriter) -> None:
        self.writer = writer
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (job := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.writer.write_shard(*job)
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    self.error = e

    def put(self, *job: Any) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(job)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def _layer_dims(
    model: LoadedModel,
    data: Dataset,
    specs: list[LayerSpec],
    device: torch.device,
) -> list[int]:
    """Widths of the chosen layers: known from the model, or from one sample's forward pass."""
    if all(s.dim is not None for s in specs):
        return [int(s.dim) for s in specs]  # type: ignore[arg-type]
    with torch.no_grad(), LayerRecorder(model.model, specs) as rec:
        out = _forward_pooled(model, rec, model.preprocess(data.get_items([0])), ["mean"], device)
    return [int(out[f"{s.name}.mean"].shape[-1]) for s in specs]


def extract(
    model: LoadedModel | str,
    data: Dataset | str,
    out: str | Path,
    *,
    layers: Selection = None,
    pooling: str | Sequence[str] | None = None,
    batch_size: int = 64,
    shard_size: int = 4096,
    device: str | torch.device | None = None,
    store_dtype: str = "float32",
    precision: str = "auto",
    progress: bool = True,
    unit: str = "sample",
    word_pooling: str = "mean",
    stride: int | None = None,
    span_pooling: str = "mean",
    component: str = "resid",
    template: str | None = None,
    chat_template: bool = False,
    read: str = "prompt",
) -> FeatureCache:
    """Record pooled layer features of every sample of ``data`` into a cache at ``out``.

    Args:
        model: a :class:`~probekit.models.LoadedModel` or a spec for :func:`load_model`.
        data: a :class:`~probekit.data.Dataset` or a spec for :func:`load_data`.
        out: the cache folder. An unfinished cache with the same settings is resumed, a finished
            one is returned as it is, one with other settings is refused.
        layers: which layers (``None`` all, an int n the last n, indices, names or globs).
        pooling: ``"cls"``, ``"mean"``, ``"last"``, ``"cls+mean"`` or a list; default: the
            model's (``cls+mean`` for encoders and ViTs, ``last`` for decoder LMs, ``mean`` for CNNs).
        batch_size: samples per forward pass.
        shard_size: samples per shard (a shard is the unit of resume).
        device: where to run the model (default: where it is).
        store_dtype: dtype the features are stored in (``float32``, ``float16``: half the disk
            and RAM, ``bfloat16``: the same with float32's range); part of the fingerprint.
        precision: numerics of the forward pass: ``auto`` (``bf16`` autocast where the device
            computes bfloat16 natively: CUDA with bf16, CPUs with AVX512-BF16 or AMX; else
            ``fp32``), ``fp32``, ``medium`` or ``bf16``. The manifest records the resolved one,
            and the intra-op thread count (``threads``) with which every later writer of the
            cache (a resume, each rank) runs its CPU forward passes.
        progress: show a tqdm progress bar (rank 0 only with several processes).
        unit: what one row of the cache is: ``"sample"`` (one input, pooled by ``pooling``),
            ``"word"`` (every labelled word of word-level data, its sub-words pooled by
            ``word_pooling``) or ``"token"`` (every sub-word token of a labelled word). A unit
            cache records one pooling, named after ``word_pooling`` (``"token"`` for tokens);
            its rows carry their sample and position (:attr:`FeatureCache.samples`,
            :meth:`FeatureCache.rows_of`), and a shard holds ``shard_size`` whole inputs.
        word_pooling: ``"mean"`` (default), ``"first"`` or ``"last"`` of a word's sub-words.
        stride: ``unit="word"``: split an input longer than the model's window into
            overlapping windows with ``stride`` tokens of overlap and read each word from the
            window where it has the most context (default ``None``: truncate); in the
            fingerprint.
        span_pooling: ``unit="span"``: a span's ``"mean"`` word (default) or its first and
            last word concatenated (``"endpoints"``); a pair of spans concatenates both.
        component: what of each block is recorded: ``"resid"`` (default: the residual stream,
            the layers ``layers.0..L``), ``"attn"`` or ``"mlp"`` (the attention / MLP
            sub-block's output as the block adds it to the stream, layers ``attn.1..L`` /
            ``mlp.1..L``, each ``(B, T, D)`` before pooling; GPT-2, Llama, Mistral, Qwen2 and
            Gemma 3 decoders). For these ``layers`` counts blocks: index ``l`` is block ``l``
            (1..L, -1 the last; there is no layer 0). Any ``unit`` and ``pooling`` apply. A
            component other than ``resid`` is in the manifest and the fingerprint (see
            :mod:`probekit.models.components`).
        template: text models: a prompt holding ``{text}`` once (``"Review: {text}\\nSentiment:"``)
            that each text is put in; no other braces. Truncation cuts the text, never the
            template (see :mod:`~probekit.recording.prompts`).
        chat_template: put the prompt (or the bare text) as the user turn into the tokenizer's
            chat template, with the generation prompt; ConfigError when it has none.
        read: where ``mean``, ``last`` and ``last-N`` read: ``"prompt"`` (default, every token
            of the prompt) or ``"text"`` (the tokens overlapping the text's characters, by the
            fast tokenizer's offsets). The three are the manifest's ``prompt`` entry, in the
            fingerprint (absent when none is used).

    Several processes: launched by ``torchrun --nproc-per-node N`` (or called inside any
    ``torch.distributed`` job), rank ``r`` computes the shards ``i`` with ``i % N == r`` on its own
    device (``cuda`` becomes ``cuda:LOCAL_RANK``) into the one folder ``out``; rank 0 finalises
    once all are written. A rank that dies costs only its unfinished shards: running again, with
    any number of processes, computes only the missing ones. A shard's bytes do not depend on
    which process computed it (on the same machine and software; see ``docs/scale.md``).

    Returns:
        The finished :class:`~probekit.cache.FeatureCache`; ``cache.load()`` gives ``(N, L, D)``
        for one pooling, ``(N, L, P, D)`` for several.

    Raises:
        CacheMismatchError: ``out`` holds a cache made with other settings.
        ConfigError: a bad ``template`` or ``read``, no chat template, no fast tokenizer, or a
            template that leaves no room for a text (all before the first forward pass).
        DataError: ``data`` is empty, or a text has no token to read (``read="text"``).
        IndexError / ValueError: bad ``layers`` or ``pooling``.
        ConfigError: an unknown ``component``, or ``attn`` / ``mlp`` of an image model or an
            unsupported architecture.
    """
    check_component(component)
    if store_dtype not in STORE_DTYPES:
        raise ConfigError(
            f"unknown store_dtype {store_dtype!r}; choose from {', '.join(STORE_DTYPES)}"
        )
    prompted = check_prompt_options(template, chat_template, read, unit, [])
    data = load_data(data) if isinstance(data, str) else data
    if len(data) == 0:
        raise DataError(f"dataset {data.name!r} is empty: nothing to extract")
    model = load_model(model) if isinstance(model, str) else model
    if model.kind != data.kind:
        raise ValueError(f"{model.spec} takes {model.kind} but {data.name} holds {data.kind} data")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if component != "resid":  # its architecture checked before the units are planned
        select_component(model, component, layers)
    plan = None
    if unit != "sample":
        if pooling is not None:
            raise ConfigError(
                f"unit={unit} pools a word's sub-words with word_pooling "
                f"(mean, first, last), not pooling={pooling!r}"
            )
        plan = plan_units(model, data, unit, word_pooling, stride, span_pooling)
        poolings = [{"word": word_pooling, "token": "token", "span": "span"}[unit]]
    else:
        if stride is not None:
            raise ConfigError("stride applies to unit=word (word rows read from windows)")
        poolings = model_poolings(model, pooling)
    if "tokens" in poolings:
        raise ValueError("tokens pooling keeps every token and is not cached; use probekit.record")
    prompts = None
    if prompted:
        check_prompt_options(template, chat_template, read, unit, poolings)
        prompts = plan_prompts(model, data.texts or [], template, chat_template, read)
        model = prompts.wrap(model)
    specs = select_component(model, component, layers)
    device = torch.device(device) if device is not None else model.device
    precision = resolve_precision(precision, device.type)  # "auto" -> "bf16" / "fp32"
    ranks = join_ranks(device)
    try:
        job = _Job(model, data, specs, poolings, batch_size, ranks.device(device), precision, plan)
        return _extract_ranks(
            job, Path(out), shard_size, store_dtype, progress, ranks, component, prompts
        )
    finally:
        ranks.close()


@dataclass(frozen=True)
class _Job:
    """What an extraction computes, as every stage below :func:`extract` needs it: the model and
    data, the chosen layers and poolings, the batch size, this rank's device, the resolved
    precision and, for a unit cache, its row plan."""

    model: LoadedModel
    data: Dataset
    specs: list[LayerSpec]
    poolings: list[str]
    batch_size: int
    device: torch.device
    precision: str
    plan: UnitPlan | None = None


def _extract_ranks(
    job: _Job,
    out: Path,
    shard_size: int,
    store_dtype: str,
    progress: bool,
    ranks: Ranks,
    component: str = "resid",
    prompts: PromptPlan | None = None,
) -> FeatureCache:
    """The shards of this rank (all of them in one process); rank 0 creates and finalises."""
    model, data, specs, poolings, device, plan = (
        job.model,
        job.data,
        job.specs,
        job.poolings,
        job.device,
        job.plan,
    )
    model.to(device)
    dims = _layer_dims(model, data, specs, device)
    if plan is not None:  # span rows concatenate endpoints or pairs
        dims = [d * plan.width_factor for d in dims]
    truncated = (
        model.count_truncated(data.texts) if prompts is None else prompts.count_cut(data.texts)
    )
    notes: dict[str, Any] = {"truncated_samples": truncated}
    manifest: dict[str, Any] = {
        "model": model.info,
        "layers": [
            {"name": s.name, "dim": d, "module": s.module, "io": s.io} for s, d in zip(specs, dims)
        ],
        "poolings": poolings,
        "dtype": store_dtype,
        "precision": job.precision,
        "preprocessing": model.info.get("preprocessing"),
        "dataset": {
            "name": data.name,
            "fingerprint": data.fingerprint,
            "n": len(data),
            "label_names": list(data.label_names),
            "kind": data.kind,
        },
        "info": notes,  # not fingerprinted
        "threads": torch.get_num_threads(),  # not fingerprinted; an existing cache keeps its own
    }
    if component != "resid":  # resid caches keep the manifest (and fingerprint) they always had
        manifest["component"] = component
    if prompts is not None:
        manifest["prompt"] = prompts.identity
        lasts = {p: int(p[5:]) for p in poolings if p.startswith("last-") and p[5:].isdigit()}
        if lasts:  # windows no longer than N tokens: last-N reads their first token
            notes["short_windows"] = {p: prompts.short_windows(n) for p, n in lasts.items()}
    n_rows, shard_rows = len(data), None
    if plan is not None:
        manifest.update(unit=plan.unit, word_pooling=plan.word_pooling)
        if plan.spans is not None:
            manifest["span_pooling"] = plan.span_pooling
        if plan.stride is not None:
            manifest["stride"] = plan.stride
        notes["dropped_words"] = plan.n_dropped
        starts = range(0, len(data), shard_size)
        shard_rows = [plan.rows(s, min(s + shard_size, len(data))) for s in starts]
        n_rows = sum(shard_rows)

    def create() -> CacheWriter:
        return CacheWriter.create(
            out,
            manifest,
            n_samples=n_rows,
            shard_size=shard_size,
            texts=data.texts,
            shard_rows=shard_rows,
        )

    if not ranks.distributed:
        writer = create()
        todo = writer.missing_shards()
        if writer.complete and not todo:
            return FeatureCache.open(out)
    else:  # rank 0 makes the folder (or refuses it) first; the others then open the same cache
        ranks.agree(create)
        writer = ranks.agree(create, on=None)
        assert writer is not None
        todo = [
            i
            for i in range(ranks.rank, writer.n_shards, ranks.world_size)
            if not writer.shard_ok(i)
        ]  # shard i belongs to rank i mod N
    ranks.agree(
        lambda: _write_shards(job, writer, todo, progress and ranks.rank == 0, ranks), on=None
    )
    if not ranks.distributed:
        cache = writer.finalize()
        _warn_mixed_numerics(writer)
        return cache

    def finish() -> None:
        # after every rank's shards are on disk; a fresh writer sees the manifest as it is now (a
        # rank that repaired a shard of a finished cache has marked it unfinished)
        final = create()
        final.finalize()
        _warn_mixed_numerics(final)

    ranks.agree(finish)
    return FeatureCache.open(out)


def _numerics_label(numerics: dict[str, Any] | None) -> str:
    if numerics is None:
        return "unrecorded numerics (an older probekit)"
    threads = numerics.get("threads")
    where = f"{numerics.get('device')}, {numerics.get('precision')}"
    return f"{where}, {threads} thread{'s' if threads != 1 else ''}" if threads else where


def _warn_mixed_numerics(writer: CacheWriter) -> None:
    """Warn when the shards of a cache were computed with different numerics, naming them."""
    groups: dict[str, list[int]] = {}
    for i, numerics in writer.shard_numerics().items():
        groups.setdefault(_numerics_label(numerics), []).append(i)
    if len(groups) < 2:
        return
    parts = "; ".join(
        f"shard{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids[:10]))}"
        f"{' ...' if len(ids) > 10 else ''} ({label})"
        for label, ids in sorted(groups.items(), key=lambda g: -len(g[1]))
    )
    warnings.warn(
        f"the shards of {writer.path} were computed with different numerics, so their features "
        f"may differ in the last bits from a uniform run: {parts}. Delete a group's shard files "
        "and extract again to recompute them with the cache's numerics",
        stacklevel=3,
    )


def _write_shards(
    job: _Job, writer: CacheWriter, todo: list[int], progress: bool, ranks: Ranks
) -> None:
    """Compute and write the shards ``todo`` (a writer thread writes while the next is computed).

    On a CPU with the cache's recorded thread count (see the module docstring); elsewhere the
    thread count does not govern the forward pass and is left alone.
    """
    if not todo:
        return
    device = job.device
    recorded = writer.manifest.get("threads") if device.type == "cpu" else None
    ambient = torch.get_num_threads()
    with intra_op_threads(recorded if isinstance(recorded, int) else None) as threads:
        if device.type == "cpu":
            _check_threads(writer, todo, recorded, threads, ambient, ranks)
        numerics = {
            "device": device.type,
            "precision": job.precision,
            "threads": threads if device.type == "cpu" else None,
        }
        _compute_shards(job, writer, todo, progress, numerics)


def _check_threads(
    writer: CacheWriter, todo: list[int], recorded: Any, threads: int, ambient: int, ranks: Ranks
) -> None:
    """Warn when this process cannot compute with the cache's thread count, or oversubscribes."""
    who = f"rank {ranks.rank}" if ranks.distributed else "this process"
    if isinstance(recorded, int) and threads != recorded:
        warnings.warn(
            f"{who} computes shards {todo[:10]} of {writer.path} with {threads} intra-op "
            f"thread(s), not the {recorded} the cache was made with: their features may differ in "
            "the last bits from the other shards",
            stacklevel=4,
        )
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if ranks.distributed else 1
    cores = usable_cores()
    if threads > ambient and threads * local > cores and ranks.local_rank == 0:
        warnings.warn(
            f"{local} process(es) each run {threads} intra-op threads (the count {writer.path} "
            f"was made with, kept for bitwise-equal shards) on {cores} cores: oversubscribed "
            "and slow; to use fewer threads, extract into a new folder",
            stacklevel=4,
        )


def _compute_shards(
    job: _Job, writer: CacheWriter, todo: list[int], progress: bool, numerics: dict[str, Any]
) -> None:
    """Compute and write the shards ``todo``.

    Shard ``i`` holds the inputs ``i * shard_size ..``; in a sample cache those are its rows, in a
    unit cache its rows are their words (tokens), in order.
    """
    model, data, specs, poolings, device, plan = (
        job.model,
        job.data,
        job.specs,
        job.poolings,
        job.device,
        job.plan,
    )
    batch_size = job.batch_size
    labels = torch.as_tensor(data.labels, dtype=torch.int64)
    size = writer.shard_size

    def inputs_of(i: int) -> tuple[int, int]:
        if plan is None:
            return writer.shard_range(i)
        return i * size, min((i + 1) * size, len(data))

    total = sum(inputs_of(i)[1] - inputs_of(i)[0] for i in todo)
    bar = tqdm(total=total, desc=f"extract {model.spec}", unit="sample", disable=not progress)
    shard_writer = _ShardWriter(writer)
    try:
        with (
            torch.no_grad(),
            precision_context(job.precision, device),
            LayerRecorder(model.model, specs) as recorder,
            ThreadPoolExecutor(1, thread_name_prefix="probekit-prep") as prep,
        ):
            for i in todo:
                start, stop = inputs_of(i)
                first, last = writer.shard_range(i)  # its rows
                # One preallocated (n, D) buffer per key: pooled rows are copied out at once, so
                # no view (``hidden[:, 0]``) keeps a whole (B, T, D) layer output alive.
                tensors = {
                    f"{spec.name}.{p}": torch.empty(
                        last - first, int(writer.dims[spec.name]), dtype=torch.float32
                    )
                    for spec in specs
                    for p in poolings
                }
                prefetch = prep if device.type != "cpu" else None
                row = 0
                batches = _batched_inputs(model, data, start, stop, batch_size, prefetch, plan)
                for s, batch in batches:
                    inputs, groups = batch if plan is not None else (batch, None)
                    out = _forward_pooled(model, recorder, inputs, poolings, device, groups)
                    out = to_host_all(out)  # CUDA: pinned buffers, one wait per batch
                    kill_point("forward")  # test hook, inert unless PROBEKIT_TEST_KILL_AT is set
                    n = 0
                    for key, t in out.items():
                        tensors[key][row : row + t.shape[0]].copy_(t)
                        n = t.shape[0]
                    row += n
                    bar.update(min(s + batch_size, stop) - s)
                columns: tuple[Any, Any, Any]
                if plan is None:
                    columns = (labels[start:stop], torch.arange(start, stop), None)
                else:
                    columns = plan.columns(start, stop)
                shard_writer.put(i, tensors, *columns, numerics)
    finally:
        bar.close()
        shard_writer.close()


def record(
    model: LoadedModel,
    items: Sequence[Any],
    *,
    layers: Selection = None,
    pooling: str | Sequence[str] | None = "tokens",
    batch_size: int = 32,
    component: str = "resid",
    template: str | None = None,
    chat_template: bool = False,
    read: str = "prompt",
) -> dict[str, Tensor]:
    """Record layers of a few inputs in memory, without a cache.

    Args:
        model: a loaded model.
        items: strings or images.
        layers: as in :func:`extract`.
        pooling: as in :func:`extract`, plus ``"tokens"`` (every token).
        component: as in :func:`extract` (``"resid"``, ``"attn"``, ``"mlp"``).
        pooling: as in :func:`extract`, plus ``"tokens"`` (every token of the prompt).
        template, chat_template, read: as in :func:`extract`.

    Returns:
        ``{"<layer>.<pooling>": Tensor}``: ``(N, D)`` pooled, or ``(N, S, D)`` for ``tokens``
        (text padded to the longest input of each batch, then to the longest overall with zeros).
    """
    poolings = model_poolings(model, pooling)
    check_component(component)
    if check_prompt_options(template, chat_template, read, "sample", poolings):
        model = plan_prompts(model, [str(t) for t in items], template, chat_template, read).wrap(
            model
        )
    specs = select_component(model, component, layers)
    device = model.device
    parts: dict[str, list[Tensor]] = {}
    with torch.no_grad(), LayerRecorder(model.model, specs) as recorder:
        for s in range(0, len(items), batch_size):
            inputs = model.preprocess(list(items[s : s + batch_size]))
            for key, t in _forward_pooled(model, recorder, inputs, poolings, device).items():
                parts.setdefault(key, []).append(t.cpu().clone())  # no view of a layer output
    out = {}
    for key, ts in parts.items():
        if ts[0].ndim == 3:
            width = max(t.shape[1] for t in ts)
            ts = [torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[1])) for t in ts]
        out[key] = torch.cat(ts)
    return out
