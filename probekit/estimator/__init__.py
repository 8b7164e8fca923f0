"""``ProbeClassifier``: a probe head behind the scikit-learn estimator contract.

The package is split by concern: :mod:`.model` (``model_``: the feature normalisation and the
head), :mod:`.inputs` (what ``X`` and ``y`` may be), :mod:`.recipes` (each head's training
recipe, a :class:`~probekit.train.TrainConfig`), :mod:`.persist` (save and load), :mod:`.rows` (rows read from
the memory-mapped cache, a memory budget), :mod:`.stream` (out-of-core training) and :mod:`.classifier` (the estimator).
"""

from __future__ import annotations

from .classifier import ProbeClassifier
from .model import FeatureNorm, ProbeModel
from .persist import FORMAT_VERSION
from .recipes import HEAD_DEFAULTS
from .rows import CacheSubset, cache_subset

__all__ = [
    "FORMAT_VERSION",
    "HEAD_DEFAULTS",
    "CacheSubset",
    "FeatureNorm",
    "ProbeClassifier",
    "ProbeModel",
    "cache_subset",
]
