"""``ProbeClassifier`` and ``ProbeRegressor``: probe heads behind the scikit-learn estimator contract.

The package is split by concern: :mod:`.model` (``model_``: the feature normalisation and the
head), :mod:`.inputs` (what ``X`` and ``y`` may be), :mod:`.recipes` (each head's training
recipe, a :class:`~probekit.train.TrainConfig`), :mod:`.persist` (save and load), :mod:`.stream`
(out-of-core training over :mod:`probekit.cache.rows`), :mod:`.fitted` (what attribution reads
from a fitted estimator), :mod:`.control` (control tasks), the shared estimator
machinery :mod:`.base`, and the estimators :mod:`.classifier` and :mod:`.regressor`.
"""

from __future__ import annotations

from .base import ProbeEstimator
from .classifier import ProbeClassifier
from .model import FeatureNorm, ProbeModel
from .persist import FORMAT_VERSION
from .recipes import HEAD_DEFAULTS
from .regressor import ProbeRegressor

__all__ = [
    "FORMAT_VERSION",
    "HEAD_DEFAULTS",
    "FeatureNorm",
    "ProbeClassifier",
    "ProbeEstimator",
    "ProbeModel",
    "ProbeRegressor",
]
