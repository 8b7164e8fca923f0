"""The user-facing exceptions: one family, one line each.

Everything a user can get wrong (a bad spec, a bad option, bad data, a corrupt or mismatched
cache) raises a subclass of :class:`ProbekitError`. The CLI prints such an error as one line and
exits with code 2. Any other exception is a bug in probekit: the CLI shows its traceback and
exits with code 1.

The subclasses also derive from the built-in exception a caller would have caught before
(``ValueError`` for bad input, ``RuntimeError`` for a broken cache), so existing
``except ValueError`` blocks keep working.
"""

from __future__ import annotations

__all__ = [
    "CacheError",
    "CacheMismatchError",
    "ConfigError",
    "DataError",
    "DataTypeError",
    "ModelError",
    "ProbekitError",
]


class ProbekitError(Exception):
    """Base of every error caused by the user's input rather than by a bug in probekit."""


class ConfigError(ProbekitError, ValueError):
    """A bad option or run configuration: unknown head, bad parameter value, bad layer spec."""


class DataError(ProbekitError, ValueError):
    """Bad data or a bad data spec: unknown scheme, missing column, empty dataset, NaN rows."""


class DataTypeError(DataError, TypeError):
    """Values of the wrong kind where numbers are needed (an object array holding a dict)."""


class ModelError(ProbekitError, ValueError):
    """A model spec that cannot be loaded (unknown scheme, missing checkpoint, bad weights)."""


class CacheError(ProbekitError, RuntimeError):
    """A cache is missing, incomplete, corrupt, or a path is not a cache."""


class CacheMismatchError(CacheError):
    """A cache exists at the path but was made with other settings (different fingerprint)."""
