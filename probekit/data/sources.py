"""The data-source registry: ``{scheme: loader}``, and the one options object every loader takes.

A loader is ``loader(source, spec, options) -> Dataset``: ``source`` is what follows the scheme
(``"csv:data/words.csv"`` -> ``"data/words.csv"``), ``spec`` the whole spec string (hash it into
the fingerprint: ``Dataset(spec=spec, ...)``) and ``options`` a :class:`DataOptions`. A new
source is one file with its loader and one line::

    register_data_source("toy", load_toy)                  # classification only
    register_data_source("csv", load_csv, targets=DATA_TARGETS, streaming=False)

:func:`~probekit.data.load_data` checks what a source declared (``targets``, ``streaming``)
before calling it, so a loader only reads the options it understands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from .dataset import Dataset

__all__ = [
    "DATA_TARGETS",
    "DataOptions",
    "DataSource",
    "get_data_source",
    "list_data_sources",
    "register_data_source",
]

DATA_TARGETS = ("classification", "regression")


@dataclass(frozen=True)
class DataOptions:
    """The options of :func:`~probekit.data.load_data`, passed as one object to every loader.

    Attributes:
        split: which split (``None``: the source's default; single-split sources accept only
            ``None`` or ``"train"``).
        text_column: the column holding the text (or image), for tabular sources.
        label_column: the column holding the label (or the regression target).
        limit: keep at most this many samples (a class-stratified seeded subset, in order).
        seed: seed for ``limit``.
        target: ``"classification"`` or ``"regression"`` (continuous ``Dataset.targets``).
        streaming: read the source as a stream (sources registered with ``streaming=True``).
    """

    split: str | None = None
    text_column: str | None = None
    label_column: str | None = None
    limit: int | None = None
    seed: int = 0
    target: str = "classification"
    streaming: bool = False


Loader = Callable[[str, str, DataOptions], "Dataset"]


@dataclass(frozen=True)
class DataSource:
    """One registered source: its loader and what it can do.

    Attributes:
        scheme: the spec prefix (``"csv"`` for ``"csv:PATH"``).
        loader: ``(source, spec, options) -> Dataset``.
        targets: the ``DataOptions.target`` values it serves.
        streaming: whether it reads ``DataOptions.streaming=True``.
    """

    scheme: str
    loader: Loader
    targets: tuple[str, ...] = ("classification",)
    streaming: bool = False


_SOURCES: dict[str, DataSource] = {}


def register_data_source(
    scheme: str,
    loader: Loader,
    *,
    targets: Sequence[str] = ("classification",),
    streaming: bool = False,
) -> Loader:
    """Register ``loader`` for specs ``"{scheme}:..."``; returns the loader (usable as a call).

    Args:
        scheme: the prefix, letters, digits, ``-`` or ``_`` (no ``:``).
        loader: ``(source, spec, options: DataOptions) -> Dataset``.
        targets: the targets it serves (a subset of :data:`DATA_TARGETS`).
        streaming: whether it honours ``streaming=True``.

    Raises:
        ConfigError: a malformed scheme, an unknown target, or a scheme taken by another loader.
    """
    if not scheme or not scheme.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"a data scheme is letters, digits, '-' or '_'; got {scheme!r}")
    bad = sorted(set(targets) - set(DATA_TARGETS))
    if bad:
        raise ConfigError(f"unknown data target(s) {bad}; choose from {', '.join(DATA_TARGETS)}")
    known = _SOURCES.get(scheme)
    if known is not None and known.loader.__qualname__ != loader.__qualname__:
        raise ConfigError(
            f"data scheme {scheme!r} is already registered to {known.loader.__qualname__}"
        )
    _SOURCES[scheme] = DataSource(scheme, loader, tuple(targets), streaming)
    return loader


def list_data_sources() -> list[str]:
    """The registered schemes, in registration order (the built-ins first)."""
    return list(_SOURCES)


def get_data_source(scheme: str) -> DataSource | None:
    """The source registered as ``scheme``, or None."""
    return _SOURCES.get(scheme)
