"""LayerRecorder: record chosen module inputs/outputs with forward hooks, pooled on the device.

Hooks are registered in ``__enter__`` and always removed in ``__exit__``, also when the model
raises. With ``stop_early=True`` the forward pass is cut short right after the last requested
point fires, so layers after it are never computed.

On a model dispatched by accelerate (``device_map``, disk or CPU offload), accelerate wraps each
block's ``forward`` to move its weights and inputs; torch's forward hooks run around that wrapper,
so a hook sees the block's real output on whichever device the block ran, and ``transform``
pools it there.

Example:
    >>> with LayerRecorder(model, specs, transform=lambda name, h: h[:, 0]) as rec:
    ...     rec.run(model, **batch)
    >>> rec.records["layers.3"].shape  # (B, D)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from .layers import LayerSpec

__all__ = ["LayerRecorder", "StopForward"]


class StopForward(Exception):
    """Raised inside a hook to end the forward pass after the last requested layer."""


def _first_tensor(value: Any) -> Tensor:
    """The hidden states in what a module returned or received (tensor, tuple, or model output)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value:
        return _first_tensor(value[0])
    if isinstance(value, dict) and value:
        return _first_tensor(next(iter(value.values())))
    if hasattr(value, "to_tuple"):
        return _first_tensor(value.to_tuple())
    raise TypeError(f"cannot find a tensor in a {type(value).__name__}")


class LayerRecorder:
    """Context manager recording the outputs (or inputs) of chosen modules.

    Args:
        model: the model to hook.
        specs: which modules to record (see :class:`probekit.layers.LayerSpec`).
        transform: ``transform(name, hidden) -> value`` applied inside the hook (pooling), so a full
            ``(B, T, D)`` of every layer is never kept; default keeps the tensor as it is.
        stop_early: stop the forward pass after the last spec fires (the last in forward order,
            found on the first call).

    Attributes:
        records: ``{name: transform(name, hidden)}`` of the last forward pass.
    """

    def __init__(
        self,
        model: nn.Module,
        specs: Sequence[LayerSpec],
        transform: Callable[[str, Tensor], Any] | None = None,
        stop_early: bool = True,
    ) -> None:
        if not specs:
            raise ValueError("LayerRecorder needs at least one layer to record")
        modules = dict(model.named_modules())
        missing = [s.module for s in specs if s.module not in modules]
        if missing:
            raise ValueError(f"model has no module named {missing[0]!r}")
        self.model = model
        self.specs = list(specs)
        self.transform = transform or (lambda name, h: h)
        self.stop_early = stop_early
        self.records: dict[str, Any] = {}
        self._modules = modules
        self._handles: list[Any] = []

    def _hook(self, spec: LayerSpec) -> Callable[..., None]:
        def record(value: Any) -> None:
            self.records[spec.name] = self.transform(spec.name, _first_tensor(value).detach())
            if self.stop_early and len(self.records) == len(self.specs):
                raise StopForward

        if spec.io == "input":
            return lambda module, args, kwargs: record(
                args[0] if args else kwargs.get("hidden_states", kwargs)
            )
        return lambda module, args, output: record(output)

    def __enter__(self) -> LayerRecorder:
        try:
            for spec in self.specs:
                module = self._modules[spec.module]
                if spec.io == "input":
                    handle = module.register_forward_pre_hook(self._hook(spec), with_kwargs=True)
                else:
                    handle = module.register_forward_hook(self._hook(spec))
                self._handles.append(handle)
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook this recorder registered (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Call ``fn(*args, **kwargs)`` (usually the model) and return the records.

        Raises:
            RuntimeError: the forward pass ended without reaching every requested layer.
        """
        self.records = {}
        try:
            fn(*args, **kwargs)
        except StopForward:
            pass
        if len(self.records) != len(self.specs):
            missed = [s.name for s in self.specs if s.name not in self.records]
            raise RuntimeError(f"the forward pass never reached {', '.join(missed)}")
        return self.records
