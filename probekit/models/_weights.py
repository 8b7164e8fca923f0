"""Reading weights: local checkpoints, a shape-checked load, file hashes, seeded random init, and
one-line errors for everything the hub or timm can raise.

Checkpoints are ``.safetensors`` files or torch state dicts (``.pth``, ``.pt``, ``.bin``,
``.ckpt``) read with ``torch.load(weights_only=True)``: no pickle code ever runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModelError

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "explain_load_error",
    "file_sha256",
    "files_sha256",
    "hf_folder",
    "hf_weight_files",
    "load_checked",
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
    over ``BertModel``), in which case the task head's keys are left out and counted.

    Args:
        model: the freshly built model.
        state: the checkpoint's tensors.
        spec: the model spec, for error messages.
        source: the checkpoint path, for error messages.
        base_prefix: the transformers ``base_model_prefix``, if any.

    Returns:
        ``{"ignored_keys": n}``: checkpoint keys left out (outside the base model, or buffers
        the model does not save).

    Raises:
        ModelError: naming the first missing key, the first unexpected key, or the first shape
            mismatch (``key: checkpoint (a, b) vs model (c, d)``).
    """
    expected = model.state_dict()
    ignored = 0
    if not set(expected) & set(state) and all(k.startswith("module.") for k in state):
        state = _strip(state, "module.")
    if base_prefix and not set(expected) <= set(state):
        inner = _strip(state, base_prefix + ".")
        if inner and set(expected) <= set(inner):
            ignored = len(state) - len(inner)
            state = inner
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
    return {"ignored_keys": ignored}


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
