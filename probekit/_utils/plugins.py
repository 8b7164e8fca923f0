"""``plugins``: modules imported before a run is checked, so that their registrations
(``register_data_source``, ``register_pooling``, ``register_probe``) take effect.

A plugin is a module name (``mypkg.probing``, importable from ``sys.path``) or the path of a
``.py`` file (imported under the name ``probekit_plugin_<stem>``, once per resolved path).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from ..errors import ConfigError

__all__ = ["import_plugins"]


def import_plugins(plugins: Sequence[str]) -> list[ModuleType]:
    """Import every plugin, in order; a module already imported is not run again.

    Args:
        plugins: module names or ``.py`` file paths.

    Returns:
        The imported modules.

    Raises:
        ConfigError: a file that does not exist, or a module that cannot be found. An error
            raised while a plugin runs propagates unchanged (a bug in the plugin).
    """
    return [_import_one(str(p).strip()) for p in plugins if str(p).strip()]


def _import_one(plugin: str) -> ModuleType:
    if plugin.endswith(".py") or "/" in plugin or "\\" in plugin:
        path = Path(plugin).expanduser().resolve()
        if not path.is_file():
            raise ConfigError(f"plugin file not found: {path}")
        name = f"probekit_plugin_{path.stem}"
        known = sys.modules.get(name)
        if known is not None and getattr(known, "__file__", None) == str(path):
            return known
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import plugin file {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        return module
    try:
        return importlib.import_module(plugin)
    except ModuleNotFoundError as err:
        if err.name and plugin.startswith(err.name):  # the plugin itself, not one of its imports
            raise ConfigError(f"plugin module {plugin!r} not found (not on sys.path)") from None
        raise
