"""``ProbeClassifier`` and ``ProbeRegressor``: probe heads behind the scikit-learn estimator contract.

The package is split by concern: :mod:`.model` (``model_``: the feature normalisation and the
head), :mod:`.inputs` (what ``X`` and ``y`` may be), :mod:`.recipes` (each head's training
recipe, a :class:`~probekit.train.TrainConfig`), :mod:`.persist` (save and load), :mod:`.rows` (rows
read from the memory-mapped cache), :mod:`.stream` (out-of-core training), the shared estimator
machinery :mod:`.base`, and the estimators :mod:`.classifier` and :mod:`.regressor`.
"""

from __future__ import annotations

from .base import ProbeEstimator
from .classifier import ProbeClassifier
from .model import FeatureNorm, ProbeModel
from .persist import FORMAT_VERSION
from .recipes import HEAD_DEFAULTS
from .regressor import ProbeRegressor
from .rows import CacheSubset, cache_subset

__all__ = [
    "FORMAT_VERSION",
    "HEAD_DEFAULTS",
    "CacheSubset",
    "FeatureNorm",
    "ProbeClassifier",
    "ProbeEstimator",
    "ProbeModel",
    "ProbeRegressor",
    "cache_subset",
]
