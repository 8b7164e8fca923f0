"""probekit: look inside frozen pretrained models.

Record every hidden layer into an on-disk cache, train probes over it (per-layer linear, attentive
layer fusion, LAYA, KCLA, AILA), and see which layers each prediction rests on.
"""

from __future__ import annotations

__version__ = "0.1.0"

from . import _runtime  # noqa: F401, I001  (first: tunes glibc malloc, see probekit/_runtime.py)

from .attribution import (
    AblationResult,
    ablation_sensitivity,
    attribution_agreement,
    captum_attribution,
    layer_attribution,
    layer_map,
)
from .cache import CacheError, CacheMismatchError, CacheWriter, FeatureCache
from .data import DataError, Dataset, from_arrays, load_data
from .errors import ConfigError, ProbekitError
from .estimator import ProbeClassifier
from .extract import extract, record
from .hooks import LayerRecorder
from .layers import LayerSpec, resolve_indices, select_layers
from .models import LoadedModel, ModelError, load_model
from .pipeline import RunConfig, run
from .pooling import POOLINGS, pool
from .probes import ProbeHead, ProbeOutput, check_probe, create_probe, list_probes, register_probe

# plotly stays out of the core: figures live in the subpackage ``probekit.viz``.

__all__ = [
    "__version__",
    "AblationResult",
    "ProbeClassifier",
    "ProbeHead",
    "ProbeOutput",
    "RunConfig",
    "ablation_sensitivity",
    "attribution_agreement",
    "captum_attribution",
    "check_probe",
    "create_probe",
    "layer_attribution",
    "layer_map",
    "list_probes",
    "register_probe",
    "run",
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
    "pool",
    "record",
    "resolve_indices",
    "select_layers",
]
