"""probekit: look inside frozen pretrained models.

Record every hidden layer into an on-disk cache, train probes over it (per-layer linear, attentive
layer fusion, LAYA, KCLA, AILA), and see which layers each prediction rests on.
"""

from __future__ import annotations

__version__ = "0.1.0"

import importlib
from typing import Any

# Public names -> the module that defines them. Imported on first use (PEP 562), so that
# ``import probekit`` and ``probekit --help`` load neither torch nor scikit-learn.
_EXPORTS: dict[str, str] = {
    "AblationResult": "analysis.attribution",
    "ablation_sensitivity": "analysis.attribution",
    "attribution_agreement": "analysis.attribution",
    "captum_attribution": "analysis.attribution",
    "layer_attribution": "analysis.attribution",
    "layer_map": "analysis.attribution",
    "CacheWriter": "cache",
    "FeatureCache": "cache",
    "Dataset": "data",
    "from_arrays": "data",
    "load_data": "data",
    "CacheError": "errors",
    "CacheMismatchError": "errors",
    "ConfigError": "errors",
    "DataError": "errors",
    "DataTypeError": "errors",
    "ModelError": "errors",
    "ProbekitError": "errors",
    "control_labels": "estimator.control",
    "sample_keys": "estimator.control",
    "selectivity": "estimator.control",
    "MDLResult": "analysis.mdl",
    "logit_lens": "analysis.lens",
    "TunedLens": "analysis.tuned_lens",
    "fit_tuned_lens": "analysis.tuned_lens",
    "mdl": "analysis.mdl",
    "similarity": "analysis.similarity",
    "ProbeClassifier": "estimator",
    "CacheSubset": "cache",
    "cache_subset": "cache",
    "ProbeRegressor": "estimator",
    "extract": "recording.extraction",
    "record": "recording.extraction",
    "LayerRecorder": "models.hooks",
    "LayerSpec": "models.layers",
    "resolve_indices": "models.layers",
    "select_layers": "models.layers",
    "LayerListing": "models.listing",
    "format_layers": "models.listing",
    "list_layers": "models.listing",
    "LoadedModel": "models",
    "load_model": "models",
    "run": "pipeline",
    "TrainConfig": "train",
    "RunConfig": "runs.config",
    "POOLINGS": "recording.pooling",
    "FeatureKey": "recording.pooling",
    "pool": "recording.pooling",
    "list_poolings": "recording.pooling",
    "register_pooling": "recording.pooling",
    "DataOptions": "data",
    "list_data_sources": "data",
    "register_data_source": "data",
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
    "TunedLens",
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
    "DataOptions",
    "list_data_sources",
    "list_poolings",
    "register_data_source",
    "register_pooling",
    "run",
    "sample_keys",
    "selectivity",
    "CacheError",
    "ConfigError",
    "ProbekitError",
    "CacheMismatchError",
    "CacheWriter",
    "DataError",
    "DataTypeError",
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
    "fit_tuned_lens",
    "logit_lens",
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
