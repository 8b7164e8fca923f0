"""The options of a run: :class:`RunConfig`.

:class:`RunConfig` is the one definition of a run's options: its fields are the config-file
keys, the ``probekit run`` flags (generated from the fields, see :func:`run_options`) and the
keywords of :func:`probekit.run`. A field's metadata says how text is parsed (``parse``), the
help line (``help``), the allowed values (``choices``) and which loader receives it
(``stage``: ``"data"`` -> :func:`probekit.load_data`, ``"model"`` -> :func:`probekit.load_model`,
``"extract"`` -> :func:`probekit.extract`).

Adding an option is a one-field change. For example, the model-loading option::

    checkpoint: str | None = option(None, "local weights (.safetensors / .pth) for the model",
                                    stage="model")

adds ``--checkpoint`` to ``probekit run`` (and to ``probekit extract`` and ``probekit layers``,
which take every ``stage="model"`` field), the ``checkpoint:`` config key and
``probekit.run(checkpoint=...)``, and passes ``checkpoint=...`` to ``load_model`` whenever it is
not ``None`` (an int option adds ``parse=int``; a yes/no option adds ``parse=parse_bool``, and
then ``--flag`` alone means true; ``keyword=`` and ``to_loader=`` rename and convert it for the
loader). Document the field under ``Attributes`` of :class:`RunConfig`
and, where the loader lacks the keyword, add it there. Nothing else changes: the test that
compares the CLI flags, the config keys and :func:`probekit.run`'s keywords covers the new one.

This module is light (no torch, numpy or scikit-learn): the CLI reads it to build its parser.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._utils.memory import parse_size
from .._utils.plugins import import_plugins
from ..errors import ConfigError
from ..models.layers import check_layers, parse_layers
from ..models.placement import DTYPES, parse_device_map, parse_max_memory, parse_quantization
from ..recording.options import (
    COMPONENTS,
    PRECISIONS,
    READS,
    SPAN_POOLINGS,
    STORE_DTYPES,
    UNITS,
    WORD_POOLINGS,
)
from ..recording.pooling import expand_poolings
from ..recording.prompts import check_prompt_options, parse_template

__all__ = [
    "DEFAULT_PROBES",
    "DEFAULT_RUNS",
    "RunConfig",
    "fields_named",
    "load_config",
    "loader_keywords",
    "option",
    "run_name",
    "run_options",
    "stage_options",
]

DEFAULT_PROBES = (
    "linear",
    "concat",
    "scalar-mix",
    "alf",
    "laya",
    "kcla",
    "aila-linear",
    "aila-attention",
)
FIGURE_FORMATS = ("png", "svg", "pdf", "html")
ABLATIONS = ("mean", "zero", "shuffle")
STAGES = ("data", "model", "extract")
TASKS = ("classification", "regression")

# Runs train ALF as one configuration of its grid (lr 1e-2, weight decay 1e-4, no attention
# dropout) for 20 epochs with batches of 256, so that a run finishes in minutes on a 2-core CPU. The
# paper's recipe (a 63-config lr x weight-decay x attention-dropout grid, >= 1000 steps, then a
# refit) is a GPU recipe: ``probe_params={}`` gives it.
CPU_PROBE_PARAMS: dict[str, dict[str, Any]] = {
    "alf": {"lr": 1e-2, "weight_decay": 1e-4, "dropout": 0.0, "batch_size": 256, "epochs": 20}
}


# ------------------------------------------------------------------------------- parsers


def parse_list(value: Any) -> list[str]:
    """``"linear,alf"`` -> ``["linear", "alf"]``; a list is kept."""
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return list(value)


def parse_json(value: Any) -> Any:
    """A JSON object given as text (``--probe-params '{"alf": {"lr": 0.01}}'``); else unchanged."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ConfigError(f"not valid JSON: {value!r} ({err.msg})") from None


def parse_words(value: Any) -> list[str] | None:
    """``" negative, positive"`` -> ``[" negative", " positive"]``: split on commas, every space
    kept (a leading space is part of most tokenisers' word tokens); a list is kept."""
    if value is None:
        return None
    words = value.split(",") if isinstance(value, str) else [str(w) for w in value]
    return [w for w in words if w.strip()] or None


def parse_bool(value: Any) -> bool:
    """``true/false/yes/no/1/0`` (any case) or a bool."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"expected true or false, got {value!r}")


def parse_weights_dtype(value: Any) -> str:
    """``torch_dtype`` of the weights: ``float32``, ``float16``, ``bfloat16`` (or ``fp32``,
    ``fp16``, ``half``, ``bf16``, ``torch.float16``), as its canonical name (no torch import)."""
    key = str(value).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError("choose float32, float16 or bfloat16")
    return DTYPES[key]


def option(
    default: Any = None,
    help: str = "",
    *,
    parse: Callable[[Any], Any] | None = None,
    choices: Sequence[Any] | None = None,
    stage: str | None = None,
    factory: Callable[[], Any] | None = None,
    keyword: str | None = None,
    to_loader: Callable[[Any], Any] | None = None,
) -> Any:
    """A :class:`RunConfig` field: its default, help line, parser, allowed values and stage.

    ``keyword`` names the loader's keyword when it differs from the field's name (``init_seed``
    -> ``seed`` of :func:`probekit.load_model`); ``to_loader`` converts the value for the loader
    (``random_init=True`` -> ``weights="random"``).
    """
    if stage is not None and stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")  # a bug in a field
    metadata = {
        "help": help,
        "parse": parse,
        "choices": tuple(choices) if choices else None,
        "stage": stage,
        "keyword": keyword,
        "to_loader": to_loader,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def run_name(model: str, data: str) -> str:
    """A folder name from the model and data specs: ``bundled:minilm-l6`` + ``csv:x/words.csv``
    -> ``minilm-l6_words``."""

    def part(spec: str) -> str:
        rest = spec.split(":", 1)[1] if re.match(r"^[a-z]+:", spec) else spec
        rest = rest.rstrip("/\\") or spec
        last = re.split(r"[/\\]", rest)[-1]
        stem = re.sub(r"\.(csv|tsv|json|jsonl|parquet|txt|safetensors|pth|pt|bin)$", "", last)
        return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "x"

    return f"{part(model)}_{part(data)}"


# ------------------------------------------------------------------------------- the options


def _weights_choice(random_init: bool) -> str:
    return "random" if random_init else "pretrained"


def _quantization_name(value: Any) -> str | None:
    """The spelling only: whether bitsandbytes is installed is checked before a run starts
    (:func:`probekit.pipeline.validate_run`), so a saved config reads anywhere."""
    return parse_quantization(value, check_installed=False)


SHARED_KEYWORDS: dict[str, dict[str, str]] = {
    "model": {"device": "device"},
    "data": {"seed": "seed"},
}
"""Loader keywords filled from a field of another stage: ``{stage: {keyword: field}}``."""


@dataclass
class RunConfig:
    """One run. Every field is a config-file key, a ``probekit run`` flag (``--text-column`` for
    ``text_column``) and a keyword of :func:`probekit.run`; see the module docstring to add one.

    Attributes:
        name: the run folder's name under ``out`` (default: from the model and the data).
        model: model spec (see :func:`probekit.load_model`).
        data: dataset spec (see :func:`probekit.load_data`).
        split, text_column, label_column, limit: passed to :func:`probekit.load_data`.
        task: ``"classification"`` (:class:`~probekit.ProbeClassifier`, accuracy) or
            ``"regression"`` (``load_data(target="regression")``, :class:`~probekit.ProbeRegressor`,
            R² and Spearman, a random split, the targets kept in ``CACHE/targets.json``).
        layers: which layers to record (None = all).
        component: ``resid`` (the residual stream), ``attn`` or ``mlp`` (what each block's
            attention / MLP adds to the stream; ``layers`` then counts blocks 1..L), see
            :mod:`probekit.models.components`.
        pooling: what to record (default: the model's).
        pooling: what to record (default: the model's); ``last-N`` is the token ``N`` places
            before the last.
        template, chat_template, read: the prompt each text is put in, the tokenizer's chat
            template around it, and where the poolings read (see :func:`probekit.extract`).
        batch_size, shard_size, precision, device, store_dtype, streaming: as the flags.
        probes: the heads to train.
        probe_params: per-head :class:`~probekit.ProbeClassifier` keywords, e.g.
            ``{"alf": {"lr": [0.01, 0.001]}, "laya": {"head_params": {"tau": 1.0}}}``; JSON on the CLI.
            Default: a light ALF (one config, 20 epochs); ``{}`` gives every head its paper recipe.
        memory_budget: the memory budget of probe training and attribution (``4GiB``); bigger
            caches stream from disk.
        test_size: fraction of samples held out for every reported score (stratified for
            classification, random for regression).
        seed: seeds the split, the probes and the bootstrap.
        ablation: replacement for ablation sensitivity: ``mean``, ``zero`` or ``shuffle``.
        bootstrap: bootstrap resamples for the 95% confidence intervals.
        control: also fit the linear probe to a control task (Hewitt & Liang, 2019) and report
            control accuracy and selectivity per layer (needs ``linear`` in ``probes``).
        mdl: the online-code description length per layer on the train split (Voita & Titov,
            2020).
        compare_random: also record and probe the model's architecture at a random init seeded
            with ``init_seed`` (its own cache, ``RUN/cache-random``), and draw both per-layer
            curves in one figure.
        label_words: the logit lens (:func:`probekit.analysis.lens.logit_lens`): one word per
            class, in the order of the data's class names (``label_names``), each a single token
            of the model's tokenizer, spaces kept (``" negative, positive"``); the lens predicts
            the class whose word gets the highest logit, per layer, on the test split
            (``metrics["logit_lens"]``). Needs a causal LM with its unembedding
            (``bundled:gemma3-270m``, ``hf:`` causal decoders with an LM head) and classification.
        tuned_lens: train a tuned lens (:func:`probekit.analysis.tuned_lens.fit_tuned_lens`) on
            the token rows of the train split's texts, score it and the logit lens on the test
            split's (``metrics["tuned_lens"]``, ``RUN/tuned-lens/``).
        figures: image formats to export besides HTML (``png``, ``svg``, ``pdf``).
        out: the folder that holds run folders.
        cache: the feature cache folder (default ``RUN/cache``).
        checkpoint, revision, trust_remote_code, max_length, device_map, max_memory,
            offload_folder, torch_dtype, quantization: passed to :func:`probekit.load_model`
            (``--torch-dtype`` is the weights' dtype; ``--store-dtype`` the cached features').
        random_init: load the architecture at a seeded random init (``weights="random"`` of
            :func:`probekit.load_model`), the random-weights baseline.
        init_seed: the seed of that random init (``seed`` of :func:`probekit.load_model`).
        plugins: modules or ``.py`` files imported before the options are checked, so that
            their ``register_data_source`` / ``register_pooling`` / ``register_probe`` calls
            take effect (``--plugins mymod,./heads.py``).

    Every keyword of :func:`probekit.load_model` and :func:`probekit.load_data` comes from a field;
    two come from a field of another stage (:data:`SHARED_KEYWORDS`): the model's ``device`` is
    ``device`` (the extraction moves the model there) and the data's ``seed`` is ``seed``.
    """

    name: str | None = option(None, "run folder name under --out (default: MODEL_DATA)")
    model: str = option(
        "bundled:minilm-l6",
        "hf:NAME, timm:NAME, bundled:minilm-l6, bundled:efficientnet-lite0, or a directory",
    )
    data: str = option(
        "bundled:vader-valence",
        "hf:NAME, csv:PATH, imagefolder:DIR, "
        "bundled:vader-valence, bundled:mnist, bundled:vader-valence-scores (--task regression)",
    )
    split: str | None = option(None, "dataset split (hf: and bundled:mnist)", stage="data")
    text_column: str | None = option(None, "text column of the data", stage="data")
    label_column: str | None = option(None, "label column of the data", stage="data")
    limit: int | None = option(
        None, "use at most this many samples (stratified)", parse=int, stage="data"
    )
    task: str = option(
        "classification",
        "classification (class labels) or regression (a numeric "
        "CSV column, bundled:vader-valence-scores)",
        choices=TASKS,
        stage="data",
        keyword="target",
    )
    layers: Any = option(
        None,
        "all (default), N (last N), 0,3,-1, or module globs like 'blocks.*.norm2'",
        parse=parse_layers,
        stage="extract",
    )
    component: str = option(
        "resid",
        "what each block gives: resid (the residual stream), attn or mlp (the attention / MLP "
        "output it adds to the stream; GPT-2, Llama, Mistral, Qwen2, Gemma 3)",
        choices=COMPONENTS,
        stage="extract",
    )
    pooling: str | None = option(
        None,
        "cls, mean, last, last-N (N tokens before the last), cls+mean or cls,mean "
        "(default: the model's)",
        stage="extract",
    )
    unit: str = option(
        "sample",
        "one cache row per input (sample), per labelled word (word-level data), per token, "
        "or per labelled span (span data)",
        choices=UNITS,
        stage="extract",
    )
    word_pooling: str = option(
        "mean",
        "how a word's sub-word tokens become one row (--unit word)",
        choices=WORD_POOLINGS,
        stage="extract",
    )
    span_pooling: str = option(
        "mean",
        "--unit span: a span's mean word, or its first and last word concatenated (endpoints)",
        choices=SPAN_POOLINGS,
        stage="extract",
    )
    stride: int | None = option(
        None,
        "--unit word: split long texts into windows overlapping by this many tokens "
        "(default: truncate)",
        parse=int,
        stage="extract",
    )
    template: str | None = option(
        None,
        "text models: a prompt holding {text} once, e.g. 'Review: {text}\\nSentiment:' "
        "(\\n, \\t: newline, tab; no other braces)",
        parse=parse_template,
        stage="extract",
    )
    chat_template: bool = option(
        False,
        "put the prompt (or the text) as the user turn into the tokenizer's chat template, "
        "with the generation prompt",
        parse=parse_bool,
        stage="extract",
    )
    read: str = option(
        "prompt",
        "where mean, last and last-N read: every token of the prompt, or the tokens of its "
        "{text} (text)",
        choices=READS,
        stage="extract",
    )
    batch_size: int = option(64, "extraction batch size", parse=int, stage="extract")
    shard_size: int = option(4096, "samples per cache shard file", parse=int, stage="extract")
    precision: str = option(
        "auto",
        "numerics of the forward (auto: bf16 where native, else fp32)",
        choices=PRECISIONS,
        stage="extract",
    )
    store_dtype: str = option(
        "float32",
        "dtype the features are stored in; float16/bfloat16 halve disk and RAM",
        choices=STORE_DTYPES,
        stage="extract",
    )
    streaming: bool | None = option(
        None, "read hf: data as a stream", parse=parse_bool, stage="data"
    )
    device: str | None = option(
        None, "device of the forward and the probes (default: CUDA if any)", stage="extract"
    )
    probes: list[str] = option(
        help="comma-separated heads (see probekit.list_probes())",
        parse=parse_list,
        factory=lambda: list(DEFAULT_PROBES),
    )
    probe_params: dict[str, dict[str, Any]] = option(
        help='per-head ProbeClassifier keywords as JSON, e.g. \'{"alf": {"lr": 0.01}}\'',
        parse=parse_json,
        factory=lambda: {k: dict(v) for k, v in CPU_PROBE_PARAMS.items()},
    )
    memory_budget: str | None = option(
        None,
        "memory budget of probe training and attribution, "
        "e.g. 512MB or 4GiB (default: half the RAM); bigger "
        "caches stream",
    )
    test_size: float = option(0.2, "held-out fraction (stratified)", parse=float)
    seed: int = option(0, "seed of the split, the probes and the bootstrap", parse=int)
    ablation: str = option("mean", "replacement for ablation sensitivity", choices=ABLATIONS)
    bootstrap: int = option(1000, "bootstrap resamples for the 95% intervals", parse=int)
    control: bool = option(
        False, "control task and selectivity per layer of the linear probe", parse=parse_bool
    )
    mdl: bool = option(False, "online-code MDL per layer (train split)", parse=parse_bool)
    compare_random: bool = option(
        False, "also probe the random-init model; both curves in the report", parse=parse_bool
    )
    label_words: list[str] | None = option(
        None,
        "logit lens: one single-token word per class, in the order of the class names, spaces "
        "kept (' negative, positive'); needs a causal LM with its unembedding",
        parse=parse_words,
    )
    tuned_lens: bool = option(
        False,
        "train a tuned lens on the run's texts: per-layer KL and top-1 agreement with the final "
        "layer, tuned vs logit lens",
        parse=parse_bool,
    )
    figures: list[str] = option(
        help="image formats besides HTML: png, svg, pdf (comma-separated)",
        parse=parse_list,
        factory=lambda: ["png"],
    )
    out: str = option("runs", "folder that holds the run folders")
    cache: str | None = option(None, "feature cache folder (default RUN/cache)")
    checkpoint: str | None = option(
        None,
        "local weights: a .safetensors or .pth/.pt/.bin state "
        "dict over the architecture of a timm: or hf: model",
        stage="model",
    )
    revision: str | None = option(
        None, "hub revision (branch, tag or commit) of an hf: model", stage="model"
    )
    trust_remote_code: bool = option(
        False, "allow hf: models that ship their own code", parse=parse_bool, stage="model"
    )
    max_length: int | None = option(
        None,
        "longest token sequence of a text model (default: the tokenizer's, at most 512)",
        parse=int,
        stage="model",
    )
    device_map: Any = option(
        None,
        "auto | balanced | balanced_low_0 | sequential | a device | "
        "JSON {module: device} (hf: models)",
        parse=parse_device_map,
        stage="model",
    )
    max_memory: Any = option(
        None,
        "most memory per device for the model, e.g. cpu=40MB,0=20GiB (implies device_map auto)",
        parse=parse_max_memory,
        stage="model",
    )
    offload_folder: str | None = option(
        None, "folder for the weights that device_map puts on disk", stage="model"
    )
    torch_dtype: str | None = option(
        None,
        "dtype of the weights: float32, float16, bfloat16 (default: float32)",
        parse=parse_weights_dtype,
        stage="model",
    )
    quantization: str | None = option(
        None,
        "8bit | 4bit through bitsandbytes (hf: models)",
        parse=_quantization_name,
        stage="model",
    )
    random_init: bool = option(
        False,
        "the same architecture at a seeded random init (the random-weights baseline)",
        parse=parse_bool,
        stage="model",
        keyword="weights",
        to_loader=_weights_choice,
    )
    init_seed: int | None = option(
        None, "seed of --random-init (default 0)", parse=int, stage="model", keyword="seed"
    )
    plugins: list[str] = option(
        help="comma-separated modules or .py files imported first (default: none)",
        parse=parse_list,
        factory=list,
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            parse = f.metadata.get("parse")
            if parse is not None and value is not None:
                try:
                    value = parse(value)
                except (TypeError, ValueError) as err:
                    raise ConfigError(f"bad value {value!r} for {f.name}: {err}") from None
                setattr(self, f.name, value)
        if not self.name:
            self.name = run_name(self.model, self.data)
        import_plugins(self.plugins)  # before validate: registered poolings, heads, sources
        self.validate()

    def validate(self) -> None:
        """Check every option that needs no model, data or head registry.

        Raises:
            ConfigError: naming the option and its allowed values.
        """
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(
                    f"{f.name} must be one of {', '.join(choices)}, got {getattr(self, f.name)!r}"
                )
        if not 0.0 < self.test_size < 1.0:
            raise ConfigError(f"test_size must be in (0, 1), got {self.test_size}")
        for key in ("batch_size", "shard_size", "bootstrap"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")
        if self.random_init and self.checkpoint is not None:
            raise ConfigError(
                f"random_init and checkpoint {self.checkpoint} exclude each other: "
                "a random init loads no weights"
            )
        if self.unit != "sample" and self.pooling is not None:
            raise ConfigError(
                f"unit {self.unit} pools a word's sub-words with word_pooling "
                f"({', '.join(WORD_POOLINGS)}), not pooling {self.pooling!r}"
            )
        if self.max_length is not None and self.max_length < 1:
            raise ConfigError(f"max_length must be >= 1, got {self.max_length}")
        bad = [f for f in self.figures if f not in FIGURE_FORMATS]
        if bad:
            raise ConfigError(
                f"unknown figure format {bad[0]!r}; choose from {', '.join(FIGURE_FORMATS)}"
            )
        if not self.probes:
            raise ConfigError("probes is empty; name at least one head")
        if self.task == "regression" and (self.control or self.mdl or self.compare_random):
            raise ConfigError(
                "control, mdl and compare_random apply to classification runs; "
                "drop them for task regression"
            )
        if self.control and "linear" not in self.probes:
            raise ConfigError("control needs the linear probe: add linear to probes")
        if self.label_words is not None and self.task == "regression":
            raise ConfigError("label_words (the logit lens) needs classes; drop it for regression")
        if (
            self.label_words is not None
            and self.unit == "sample"
            and self.pooling is not None
            and "last" not in expand_poolings(self.pooling)
        ):
            raise ConfigError(
                f"label_words reads the last token (next-token logits): pooling {self.pooling!r} "
                "must include last"
            )
        if self.random_init and self.compare_random:
            raise ConfigError(
                "compare_random compares the trained model with its random init; "
                "it cannot be combined with random_init"
            )
        if not isinstance(self.probe_params, dict) or not all(
            isinstance(v, dict) for v in self.probe_params.values()
        ):
            raise ConfigError(
                'probe_params must map head names to keyword dicts, e.g. {"alf": {"lr": 0.01}}'
            )
        check_layers(self.layers)
        _ = self.memory_budget is None or parse_size(self.memory_budget, "memory_budget")
        poolings = expand_poolings(self.pooling) if self.pooling is not None else []
        check_prompt_options(self.template, self.chat_template, self.read, self.unit, poolings)
        if any(c in str(self.name) for c in "/\\") or self.name in (".", ".."):
            raise ConfigError(f"run name {self.name!r} must be a folder name, not a path")

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / str(self.name)

    @property
    def cache_dir(self) -> Path:
        """Where the features are cached: ``cache``, or ``RUN/cache``."""
        return Path(self.cache) if self.cache else self.run_dir / "cache"

    @property
    def random_cache_dir(self) -> Path:
        """Where ``compare_random`` caches the random-init model: ``cache`` + ``-random``."""
        return self.cache_dir.with_name(self.cache_dir.name + "-random")

    def stage_options(self, stage: str) -> dict[str, Any]:
        """The keywords for one loader (``"data"``, ``"model"``, ``"extract"``): every field of
        that stage whose value is not ``None``, under the loader's keyword and converted for it
        (``init_seed=3`` -> ``seed=3``, ``random_init=True`` -> ``weights="random"``)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("stage") != stage or value is None:
                continue
            convert = f.metadata.get("to_loader")
            out[f.metadata.get("keyword") or f.name] = convert(value) if convert else value
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a mapping (``-`` or ``_`` in keys); unknown keys are a ConfigError naming the
        known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_options(stage: str | None = None) -> list[dataclasses.Field[Any]]:
    """The fields of :class:`RunConfig`: the one list of run options (those of one ``stage``)."""
    fields = dataclasses.fields(RunConfig)
    return [f for f in fields if stage is None or f.metadata.get("stage") == stage]


def fields_named(*names: str) -> list[dataclasses.Field[Any]]:
    """The :class:`RunConfig` fields called ``names``, in that order: the run options one
    subcommand takes (``fields_named("seed", "test_size")``)."""
    by_name = {f.name: f for f in dataclasses.fields(RunConfig)}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"RunConfig has no field {missing[0]!r}")  # a bug in a caller
    return [by_name[n] for n in names]


def loader_keywords(stage: str) -> dict[str, str]:
    """``{loader keyword: field}`` for one stage: what :meth:`RunConfig.stage_options` fills,
    plus :data:`SHARED_KEYWORDS`."""
    own = {f.metadata.get("keyword") or f.name: f.name for f in run_options(stage)}
    return {**own, **SHARED_KEYWORDS.get(stage, {})}


def stage_options(stage: str, values: dict[str, Any]) -> dict[str, Any]:
    """Parse some fields of one stage as :class:`RunConfig` does (text from a command line or
    Python values) and return the loader's keywords: how ``probekit extract`` and ``probekit
    layers`` read the model options that ``probekit run`` takes.

    Raises:
        ConfigError: a field of another stage, or a bad value.
    """
    names = {f.name for f in run_options(stage)}
    stray = sorted(set(values) - names)
    if stray:
        raise ConfigError(
            f"{stray[0]} is not a {stage} option; those are {', '.join(sorted(names))}"
        )
    return RunConfig(**values).stage_options(stage)


DEFAULT_RUN_OPTIONS: tuple[dict[str, Any], ...] = (
    {"model": "bundled:minilm-l6", "data": "bundled:vader-valence"},
    {
        "model": "bundled:efficientnet-lite0",
        "data": "bundled:mnist",
        "limit": 2000,
        "batch_size": 50,
    },
)
"""What ``probekit run`` without a config or options runs: both bundled demos, offline."""

DEFAULT_RUNS = tuple(RunConfig.from_dict(d) for d in DEFAULT_RUN_OPTIONS)


def load_config_dicts(path: str | Path) -> list[dict[str, Any]]:
    """The runs of a YAML or TOML config file as option dicts (shared keys merged into each)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config {path} does not exist")
    text = path.read_text()
    if path.suffix == ".toml":
        import tomllib

        try:
            values = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config {path} is not valid TOML: {err}") from None
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ConfigError(
                f"config {path} is not valid YAML: {str(err).splitlines()[0]}"
            ) from None
    else:
        raise ConfigError(f"config {path} must be .yaml, .yml or .toml")
    if not isinstance(values, dict):
        raise ConfigError(f"config {path} must hold a mapping of options")
    runs = values.pop("runs", None)
    if runs is None:
        return [values]
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        raise ConfigError(f"config {path}: runs must be a list of option mappings")
    return [{**values, **r} for r in runs]


def load_config(path: str | Path) -> list[RunConfig]:
    """Read a YAML or TOML config: one run's options, or ``runs: [...]`` (shared keys on top)."""
    return [RunConfig.from_dict(d) for d in load_config_dicts(path)]


# ------------------------------------------------------------------------------- run folder


# ------------------------------------------------------------------------------- regression
