"""probekit: look inside frozen pretrained models.

Record every hidden layer into an on-disk cache, train probes over it (per-layer linear, attentive
layer fusion, LAYA, KCLA, AILA), and see which layers each prediction rests on.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .cache import CacheError, CacheMismatchError, CacheWriter, FeatureCache
from .data import DataError, Dataset, from_arrays, load_data
from .extract import extract, record
from .hooks import LayerRecorder
from .layers import LayerSpec, resolve_indices, select_layers
from .models import LoadedModel, ModelError, load_model
from .pooling import POOLINGS, pool

__all__ = [
    "__version__",
    "CacheError",
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
