"""probekit: look inside frozen pretrained models.

Record every hidden layer into an on-disk cache, train probes over it (per-layer linear, attentive
layer fusion, LAYA, KCLA, AILA), and see which layers each prediction rests on.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .attribution import (
    AblationResult,
    ablation_sensitivity,
    attribution_agreement,
    captum_attribution,
    layer_attribution,
    layer_map,
)
from .cache import CacheError, CacheMismatchError, CacheWriter, FeatureCache
from .control import control_labels, sample_keys, selectivity
from .data import DataError, Dataset, from_arrays, load_data
from .errors import ConfigError, ProbekitError
from .estimator import ProbeClassifier
from .extract import extract, record
from .hooks import LayerRecorder
from .layers import LayerSpec, resolve_indices, select_layers
from .mdl import MDLResult, mdl
from .models import LoadedModel, ModelError, load_model
from .pipeline import RunConfig, run
from .pooling import POOLINGS, pool
from .probes import ProbeHead, ProbeOutput, check_probe, create_probe, list_probes, register_probe
from .similarity import similarity

# plotly stays out of the core: figures live in the subpackage ``probekit.viz``.

__all__ = [
    "__version__",
    "AblationResult",
    "MDLResult",
    "ProbeClassifier",
    "ProbeHead",
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
    "LayerSpec",
    "LoadedModel",
    "ModelError",
    "POOLINGS",
    "extract",
    "from_arrays",
    "load_data",
    "load_model",
    "mdl",
    "pool",
    "record",
    "resolve_indices",
    "select_layers",
    "similarity",
]
