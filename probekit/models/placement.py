"""Where and how a transformers model is placed: ``device_map``, ``max_memory``,
``offload_folder``, ``torch_dtype`` and ``quantization``, checked before anything is loaded.

The parsers accept what a config file or a command line gives (strings, JSON) as well as Python
values, so the CLI, the run config and :func:`probekit.load_model` share one definition. The
module is light (torch is imported only by the functions that return torch objects), so a CLI
parser can use it.
"""

from __future__ import annotations

import importlib.util
import json
import re
from typing import TYPE_CHECKING, Any

from ..errors import ModelError

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEVICE_MAP_STRATEGIES",
    "DTYPES",
    "QUANTIZATIONS",
    "dtype_name",
    "main_device",
    "placement_kwargs",
    "parse_device_map",
    "parse_dtype",
    "parse_max_memory",
    "parse_quantization",
]

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}
QUANTIZATIONS = ("8bit", "4bit")
_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_DEVICE = re.compile(r"^(cpu|disk|mps|meta|cuda(:\d+)?|xpu(:\d+)?|npu(:\d+)?|\d+)$")


def _device_key(key: Any, what: str) -> int | str:
    text = str(key).strip()
    if not _DEVICE.match(text):
        raise ModelError(
            f"{what}: unknown device {key!r}; use cpu, disk, a GPU index (0, 1, ...) or cuda:N"
        )
    return int(text) if text.isdigit() else text


def parse_device_map(value: Any) -> str | dict[str, int | str] | None:
    """Check a ``device_map``.

    Args:
        value: ``None``; a strategy (``"auto"``, ``"balanced"``, ``"balanced_low_0"``,
            ``"sequential"``); one device (``"cpu"``, ``"cuda:0"``); a dict
            ``{module_name: device}``; or that dict as a JSON string.

    Returns:
        The value transformers takes.

    Raises:
        ModelError: anything else.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise ModelError(f"device_map {value!r} is not valid JSON ({err.msg})") from None
        elif text in DEVICE_MAP_STRATEGIES:
            return text
        elif _DEVICE.match(text) and not text.isdigit():
            return text
        else:
            raise ModelError(
                f"device_map {value!r} is not one of {', '.join(DEVICE_MAP_STRATEGIES)}, "
                "a device (cpu, cuda:0) or a JSON {module: device} map"
            )
    if isinstance(value, dict):
        if not value:
            raise ModelError("device_map is an empty dict")
        return {str(k): _device_key(v, "device_map") for k, v in value.items()}
    raise ModelError(f"device_map must be a string or a dict, got {type(value).__name__}")


def parse_max_memory(value: Any) -> dict[int | str, str | int] | None:
    """Check ``max_memory``: the most each device may hold.

    Args:
        value: ``None``; a dict ``{device: size}`` with devices ``"cpu"``, ``"mps"`` or GPU
            indices and sizes in bytes or as ``"40MB"``, ``"10GiB"``; the dict as a JSON string;
            or ``"cpu=40MB,0=10GiB"``.

    Returns:
        The dict accelerate takes (GPU keys as ints).

    Raises:
        ModelError: a bad device or size.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as err:
                raise ModelError(f"max_memory {text!r} is not valid JSON ({err.msg})") from None
        else:
            pairs = [p.split("=", 1) for p in text.split(",") if p.strip()]
            if not pairs or any(len(p) != 2 for p in pairs):
                raise ModelError(
                    f"max_memory {text!r}: write DEVICE=SIZE pairs, e.g. 'cpu=40MB,0=10GiB'"
                )
            value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, dict) or not value:
        raise ModelError(f"max_memory must be a {{device: size}} dict, got {value!r}")
    out: dict[int | str, str | int] = {}
    for key, size in value.items():
        dev = _device_key(key, "max_memory")
        if isinstance(dev, str) and dev.startswith("cuda:"):
            dev = int(dev.split(":")[1])
        if isinstance(size, bool) or not (
            isinstance(size, int) and size > 0 or isinstance(size, str) and _SIZE.match(size)
        ):
            raise ModelError(
                f"max_memory[{key!r}] = {size!r} is not a size (bytes, or like '40MB', '10GiB')"
            )
        out[dev] = size.strip().upper().replace("IB", "iB") if isinstance(size, str) else size
    return out


def parse_dtype(value: Any) -> torch.dtype | None:
    """Check ``torch_dtype``: ``None`` (float32 as stored), ``"float32"``, ``"float16"``,
    ``"bfloat16"`` (or ``fp32``/``fp16``/``bf16``/``half``), or a floating ``torch.dtype``."""
    if value is None:
        return None
    import torch

    if isinstance(value, torch.dtype):
        if not value.is_floating_point:
            raise ModelError(f"torch_dtype {value} is not a floating dtype")
        return value
    key = str(value).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ModelError(f"torch_dtype {value!r} is not one of float32, float16, bfloat16")
    return getattr(torch, DTYPES[key])


def parse_quantization(value: Any, check_installed: bool = True) -> str | None:
    """Check ``quantization``: ``None``, ``"8bit"`` or ``"4bit"`` (bitsandbytes must be installed,
    unless ``check_installed=False``: a saved run config is read where it is not)."""
    if value is None or value in ("", "none", "None"):
        return None
    text = str(value).strip().lower()
    if text in ("8", "int8"):
        text = "8bit"
    if text in ("4", "int4", "nf4"):
        text = "4bit"
    if text not in QUANTIZATIONS:
        raise ModelError(f"quantization {value!r} is not one of {', '.join(QUANTIZATIONS)}")
    if check_installed and importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError(
            f"quantization={text} needs the bitsandbytes package, which is not "
            "installed (pip install bitsandbytes; it needs a supported GPU)"
        )
    return text


def dtype_name(dtype: torch.dtype | None) -> str | None:
    """``torch.bfloat16 -> "bfloat16"``; ``None`` stays ``None``."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def main_device(hf_device_map: dict[str, Any]) -> torch.device:
    """The device inputs go to for a dispatched model: its first accelerator, else the CPU
    (accelerate runs CPU- and disk-offloaded blocks on that same main device)."""
    import torch

    for dev in hf_device_map.values():
        if isinstance(dev, int):
            return torch.device("cuda", dev)
        if isinstance(dev, str) and dev not in ("cpu", "disk", "meta"):
            return torch.device(dev)
    return torch.device("cpu")


def placement_kwargs(
    device_map: Any,
    max_memory: Any,
    offload_folder: Any,
    quantization: str | None,
    dtype: torch.dtype | None,
) -> dict[str, Any]:
    import torch
    import transformers
    from packaging.version import Version

    kwargs: dict[str, Any] = {}
    if dtype is not None:
        key = "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"
        kwargs[key] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    if max_memory is not None:
        kwargs["max_memory"] = max_memory
    if offload_folder is not None:
        kwargs["offload_folder"] = str(offload_folder)
    if quantization is not None:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = (
            BitsAndBytesConfig(load_in_8bit=True)
            if quantization == "8bit"
            else BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_compute_dtype=dtype or torch.float16
            )
        )
    return kwargs
