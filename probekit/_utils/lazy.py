"""Lazy public names for a package (PEP 562), so that importing a package loads no torch.

::

    __getattr__, __dir__, __all__ = attach(__name__, {"load_model": "loading", ...})

A name is imported from its module on first use and then bound on the package, so later look-ups
skip ``__getattr__``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["attach"]


def attach(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``.

    Args:
        package: the package's ``__name__``.
        exports: public name -> the submodule that defines it, relative to ``package``
            (``"loading"``, ``"analysis.attribution"``).
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__, sorted(exports)
