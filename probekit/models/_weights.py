"""Reading weights: local checkpoints, a shape-checked load, file hashes, seeded random init, and
one-line errors for everything the hub or timm can raise.

Checkpoints are ``.safetensors`` files or torch state dicts (``.pth``, ``.pt``, ``.bin``,
``.ckpt``) read with ``torch.load(weights_only=True)``: no pickle code ever runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModelError

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "checkpoint_num_classes",
    "drop_modules",
    "droppable_modules",
    "explain_load_error",
    "file_sha256",
    "files_sha256",
    "hf_folder",
    "hf_weight_files",
    "load_checked",
    "optional_modules",
    "read_state_dict",
    "seeded",
    "state_sha256",
]

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
# Wrappers that training scripts put around a state dict (Lightning, timm's train.py, DeiT, EMA).
_NESTED_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """sha256 of a file's bytes, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def files_sha256(paths: list[Path]) -> str:
    """One sha256 for several weight files: the file's own hash for one file, else the sha256 of
    ``"name:sha256"`` lines in name order (a sharded checkpoint)."""
    paths = sorted(paths, key=lambda p: p.name)
    if len(paths) == 1:
        return file_sha256(paths[0])
    lines = "".join(f"{p.name}:{file_sha256(p)}\n" for p in paths)
    return hashlib.sha256(lines.encode()).hexdigest()


def state_sha256(model: nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes), in state-dict order.

    Used where no weight file exists (random init, timm's hub weights). Tensors on the ``meta``
    device (offloaded) cannot be read: call it on materialised models only.
    """
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike[str], spec: str) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{key: tensor}`` dict.

    Args:
        path: a ``.safetensors`` file or a torch state dict (``.pth``/``.pt``/``.bin``/``.ckpt``),
            possibly wrapped in ``{"state_dict": ...}`` or ``{"model": ...}``.
        spec: the model spec, for error messages.

    Raises:
        ModelError: the file is missing, has another suffix, is not a state dict, or holds
            pickled objects that ``weights_only=True`` refuses.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"cannot load {spec}: checkpoint {path} does not exist")
    if not p.name.endswith(CHECKPOINT_SUFFIXES):
        raise ModelError(
            f"cannot load {spec}: checkpoint {path} is not one of {', '.join(CHECKPOINT_SUFFIXES)}"
        )
    try:
        if p.name.endswith(".safetensors"):
            from safetensors.torch import load_file

            state: Any = load_file(str(p))
        else:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"cannot load {spec}: checkpoint {path} is not a readable state dict ({reason[:200]})"
        ) from None
    for key in _NESTED_KEYS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not state:
        raise ModelError(f"cannot load {spec}: checkpoint {path} holds no state dict")
    bad = next((k for k, v in state.items() if not isinstance(v, Tensor)), None)
    if bad is not None:
        raise ModelError(f"cannot load {spec}: checkpoint {path} entry {bad!r} is not a tensor")
    return dict(state)


def _strip(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _under(key: str, modules: Sequence[str]) -> bool:
    return any(key.startswith(m + ".") for m in modules)


def optional_modules(model: nn.Module) -> tuple[str, ...]:
    """Top-level modules of a transformers base model that a checkpoint may lack: the pooler,
    when the class takes ``add_pooling_layer``.

    ``BertForTokenClassification``, ``ViTForImageClassification`` and others build their base
    model with ``add_pooling_layer=False``, so their weights hold no ``pooler.*``. The pooler
    reads the last hidden state and feeds none, so leaving it out (``pooler = None``, as
    ``add_pooling_layer=False`` builds it) changes no recorded layer.
    """
    try:
        params = inspect.signature(type(model).__init__).parameters
    except (TypeError, ValueError):
        return ()
    if "add_pooling_layer" in params and isinstance(getattr(model, "pooler", None), nn.Module):
        return ("pooler",)
    return ()


def droppable_modules(model: nn.Module, missing: Sequence[str]) -> list[str]:
    """The :func:`optional_modules` of ``model`` whose every key is among ``missing`` (a module
    only partly in a checkpoint is a broken checkpoint, not a smaller architecture)."""
    gone = set(missing)
    keys = list(model.state_dict())
    return [
        m
        for m in optional_modules(model)
        if any(_under(k, (m,)) for k in keys) and all(k in gone for k in keys if _under(k, (m,)))
    ]


def drop_modules(model: nn.Module, names: Sequence[str]) -> None:
    """Set the named top-level modules to ``None`` (what ``add_pooling_layer=False`` builds)."""
    for name in names:
        setattr(model, name, None)


def checkpoint_num_classes(model: nn.Module, state: Mapping[str, Tensor]) -> int | None:
    """The class count of a timm checkpoint's classifier, where it differs from ``model``'s.

    The classifier is the module that timm's ``pretrained_cfg["classifier"]`` names (or
    ``get_classifier()``); its ``.weight`` has one row (output channel) per class. A checkpoint
    that holds none of the classifier's keys but the rest of the model was saved headless
    (``num_classes=0``). Keys under a ``module.`` prefix (DistributedDataParallel) count too.

    Returns:
        the checkpoint's ``num_classes`` when the model has another, else ``None``.
    """
    if not any(k in state for k in model.state_dict()) and all(
        k.startswith("module.") for k in state
    ):
        state = _strip(dict(state), "module.")
    current = getattr(model, "num_classes", None)
    if not isinstance(current, int):
        return None
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") if isinstance(cfg, Mapping) else None
    names = [names] if isinstance(names, str) else list(names or [])
    get_classifier = getattr(model, "get_classifier", None)
    if not names and callable(get_classifier):
        head = get_classifier()
        names = [n for n, m in model.named_modules() if n and m is head]
    modules = dict(model.named_modules())
    names = [n for n in names if n in modules]
    for name in names:
        weight = state.get(f"{name}.weight")
        if isinstance(weight, Tensor) and weight.dim() >= 1:
            n = int(weight.shape[0])
            return n if n != current else None
    head_keys = [k for k in model.state_dict() if _under(k, names)]
    body = [k for k in model.state_dict() if not _under(k, names)]
    if (
        current
        and head_keys
        and not any(k.startswith(n + ".") for k in state for n in names)
        and all(k in state for k in body)
    ):
        return 0
    return None


def load_checked(
    model: nn.Module,
    state: dict[str, Tensor],
    spec: str,
    source: str,
    base_prefix: str | None = None,
) -> dict[str, Any]:
    """Load ``state`` into ``model`` after checking every key and shape.

    Two common wrappings are undone first: a ``module.`` prefix (DistributedDataParallel) and,
    for transformers, the task model's base prefix (``bert.`` of ``BertForSequenceClassification``
    over ``BertModel``), in which case the task head's keys are left out and counted, whatever
    its size (``num_labels``). An :func:`optional_modules` module (a transformers pooler) that
    the checkpoint lacks entirely is dropped from the model (``pooler = None``) and named.

    Args:
        model: the freshly built model.
        state: the checkpoint's tensors.
        spec: the model spec, for error messages.
        source: the checkpoint path, for error messages.
        base_prefix: the transformers ``base_model_prefix``, if any.

    Returns:
        ``{"ignored_keys": n}``: checkpoint keys left out (outside the base model, or buffers
        the model does not save), plus ``"dropped": [module, ...]`` where a module was dropped.

    Raises:
        ModelError: naming the first missing key, the first unexpected key, or the first shape
            mismatch (``key: checkpoint (a, b) vs model (c, d)``).
    """
    expected = model.state_dict()
    optional = optional_modules(model)
    needed = {k for k in expected if not _under(k, optional)}
    ignored = 0
    if not set(expected) & set(state) and all(k.startswith("module.") for k in state):
        state = _strip(state, "module.")
    if base_prefix and not needed <= set(state):
        inner = _strip(state, base_prefix + ".")
        if inner and needed <= set(inner):
            ignored = len(state) - len(inner)
            state = inner
    dropped = droppable_modules(model, [k for k in expected if k not in state])
    if dropped:
        drop_modules(model, dropped)
        expected = model.state_dict()
    # Buffers the model no longer saves (``position_ids`` in checkpoints of older transformers).
    stale = [k for k, _ in model.named_buffers() if k in state and k not in expected]
    if stale:
        state = {k: v for k, v in state.items() if k not in stale}
        ignored += len(stale)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, first {missing[0]!r}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, first {unexpected[0]!r}")
        raise ModelError(
            f"cannot load {spec}: checkpoint {source} does not fit the model ({'; '.join(parts)})"
        )
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise ModelError(
                f"cannot load {spec}: checkpoint {source} does not fit the model "
                f"({key}: checkpoint {tuple(state[key].shape)} vs model "
                f"{tuple(ref.shape)})"
            )
    model.load_state_dict(state, strict=True)
    out: dict[str, Any] = {"ignored_keys": ignored}
    if dropped:
        out["dropped"] = dropped
    return out


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for the block, restoring the caller's RNG state after it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def _chain(err: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and e not in out and len(out) < 8:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def explain_load_error(
    err: BaseException, spec: str, *, revision: str | None = None, checkpoint_hint: bool = True
) -> ModelError:
    """Turn whatever the hub, transformers or timm raised into a one-line :class:`ModelError`.

    The reason is classified along the exception chain: gated repository, unknown revision,
    unknown repository (a typo), a file missing from the repository, no network / offline mode
    without cached files, remote code that needs ``trust_remote_code``, an unknown timm model or
    tag. Anything else keeps the first line of its own message.
    """
    from huggingface_hub import errors as hub

    hint = " and none given with --checkpoint" if checkpoint_hint else ""
    reason = None
    for e in _chain(err):
        text = str(e)
        if isinstance(e, hub.GatedRepoError):
            reason = (
                "the repository is gated: accept its conditions on the hub and log in "
                "(hf auth login), or give a local copy"
            )
        elif isinstance(e, hub.RevisionNotFoundError):
            reason = f"revision {revision!r} does not exist in the repository"
        elif isinstance(e, hub.RepositoryNotFoundError):
            reason = (
                "no such repository on the hub (a typo? a private repository needs a "
                "login) and no local folder of that name"
            )
        elif isinstance(e, (hub.LocalEntryNotFoundError, hub.OfflineModeIsEnabled)) or (
            "couldn't connect" in text or "cannot find the requested files" in text
        ):
            reason = (
                f"no weights offline{hint} (the hub cannot be reached or HF_HUB_OFFLINE "
                "is set, and nothing is in the local cache)"
            )
        elif isinstance(e, hub.EntryNotFoundError):
            reason = f"a file is missing from the repository ({text.splitlines()[0][:160]})"
        elif isinstance(e, hub.HFValidationError):
            reason = "not a local folder, and not a valid hub id (namespace/name)"
        elif "trust_remote_code" in text:
            reason = (
                "the checkpoint needs its own code: pass trust_remote_code=True "
                "(--trust-remote-code) if you trust it"
            )
        elif text.startswith("Unknown model"):
            reason = "unknown timm model (see timm.list_models())"
        elif text.startswith("Invalid pretrained tag"):
            reason = f"unknown pretrained tag ({text.strip()})"
        elif "No pretrained weights exist" in text:
            reason = f"timm has no pretrained weights for it{hint}"
        elif isinstance(e, ConnectionError) or type(e).__name__ in {
            "ConnectError",
            "ConnectTimeout",
        }:
            reason = f"the hub cannot be reached{hint}"
        if reason:
            break
    if reason is None:
        lines = str(err).strip().splitlines()
        reason = f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__
    return ModelError(f"cannot load {spec}: {reason}")


def hf_weight_files(folder: Path) -> list[Path]:
    """The weight files transformers reads in a checkpoint folder (safetensors first)."""
    for pattern in ("model*.safetensors", "*.safetensors", "pytorch_model*.bin", "*.bin"):
        found = sorted(folder.glob(pattern))
        if found:
            return found
    return []


def hf_folder(name: str, revision: str | None) -> Path | None:
    """The local folder of an ``hf:`` name: the directory itself, or its hub cache snapshot."""
    if Path(name).is_dir():
        return Path(name)
    try:
        from transformers.utils import cached_file

        path = cached_file(name, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - the hash then falls back to the loaded tensors
        return None
    return Path(path).parent if path else None
