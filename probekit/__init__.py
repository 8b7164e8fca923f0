"""probekit: look inside frozen pretrained models.

Record every hidden layer into an on-disk cache, train probes over it (per-layer linear, attentive
layer fusion, LAYA, KCLA, AILA), and see which layers each prediction rests on.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import _runtime  # noqa: F401, E402, I001  (tunes glibc malloc; imports no torch)

import importlib
import sys
import types
from typing import Any

# Public names -> the module that defines them. Imported on first use (PEP 562), so that
# ``import probekit`` and ``probekit --help`` load neither torch nor scikit-learn.
_EXPORTS: dict[str, str] = {
    "AblationResult": "attribution",
    "ablation_sensitivity": "attribution",
    "attribution_agreement": "attribution",
    "captum_attribution": "attribution",
    "layer_attribution": "attribution",
    "layer_map": "attribution",
    "CacheWriter": "cache",
    "FeatureCache": "cache",
    "Dataset": "data",
    "from_arrays": "data",
    "load_data": "data",
    "CacheError": "errors",
    "CacheMismatchError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "ModelError": "errors",
    "ProbekitError": "errors",
    "control_labels": "control",
    "sample_keys": "control",
    "selectivity": "control",
    "MDLResult": "mdl",
    "mdl": "mdl",
    "similarity": "similarity",
    "ProbeClassifier": "estimator",
    "CacheSubset": "estimator",
    "cache_subset": "estimator",
    "ProbeRegressor": "estimator",
    "extract": "extract",
    "record": "extract",
    "LayerRecorder": "hooks",
    "LayerSpec": "layers",
    "resolve_indices": "layers",
    "select_layers": "layers",
    "LayerListing": "listing",
    "format_layers": "listing",
    "list_layers": "listing",
    "LoadedModel": "models",
    "load_model": "models",
    "run": "pipeline",
    "TrainConfig": "train",
    "RunConfig": "runs",
    "POOLINGS": "pooling",
    "FeatureKey": "pooling",
    "pool": "pooling",
    "ProbeHead": "probes",
    "ProbeOutput": "probes",
    "check_probe": "probes",
    "create_probe": "probes",
    "list_probes": "probes",
    "register_probe": "probes",
}

# plotly stays out of the core: figures live in the subpackage ``probekit.viz``.

__all__ = [
    "__version__",
    "AblationResult",
    "MDLResult",
    "ProbeClassifier",
    "CacheSubset",
    "cache_subset",
    "ProbeHead",
    "ProbeRegressor",
    "ProbeOutput",
    "RunConfig",
    "ablation_sensitivity",
    "attribution_agreement",
    "captum_attribution",
    "check_probe",
    "control_labels",
    "create_probe",
    "layer_attribution",
    "layer_map",
    "list_probes",
    "register_probe",
    "run",
    "sample_keys",
    "selectivity",
    "CacheError",
    "ConfigError",
    "ProbekitError",
    "CacheMismatchError",
    "CacheWriter",
    "DataError",
    "Dataset",
    "FeatureCache",
    "LayerRecorder",
    "LayerListing",
    "LayerSpec",
    "LoadedModel",
    "ModelError",
    "POOLINGS",
    "FeatureKey",
    "TrainConfig",
    "extract",
    "format_layers",
    "from_arrays",
    "list_layers",
    "load_data",
    "load_model",
    "mdl",
    "pool",
    "record",
    "resolve_indices",
    "select_layers",
    "similarity",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'probekit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# ``probekit.mdl`` and ``probekit.similarity`` are functions named like their modules. Importing
# the submodule makes Python bind the module on the package; bind the function instead, as the
# eager ``from .mdl import mdl`` did (``from probekit.mdl import ...`` still reads the module).
_SAME_NAME = {name for name, module in _EXPORTS.items() if name == module}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SAME_NAME and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
