"""scikit-learn's own estimator checks over ProbeClassifier and ProbeRegressor.

``parametrize_with_checks`` runs every check scikit-learn has for a classifier or a regressor
(fitting, cloning, pickling, input validation, the error messages it expects, invariances) on
each head with small settings. The checks expected to fail are listed below with their reason;
each is inherent to what the estimator is, not a missing piece:

- ``check_methods_subset_invariance``: the minibatch heads compute in float32; predicting rows in
  a batch of another size changes the last bits (scikit-learn compares to 1e-7).
- ``check_classifiers_train`` for ALF: the check's data has 2 features, and ALF's LayerNorm over
  a 2-wide layer leaves only the sign of the difference of the two values (as in its paper), so
  the check's accuracy threshold cannot be met.
"""

from __future__ import annotations

from typing import Any

from sklearn.utils.estimator_checks import parametrize_with_checks

from probekit import ProbeClassifier, ProbeRegressor

# small settings: one configuration, a few epochs, a learning rate that moves in them
SMALL: dict[str, dict[str, Any]] = {
    "linear": {},
    "alf": {"epochs": 20, "lr": 1e-2, "weight_decay": 1e-4, "dropout": 0.0},
    "laya": {"epochs": 20, "lr": 1e-2},
    "kcla": {"epochs": 20, "lr": 1e-2},
}

FLOAT32 = "float32 minibatch heads: rows predicted in another batch size differ in the last bits"
ESTIMATORS = [
    cls(head=head, random_state=0, **params)
    for cls in (ProbeClassifier, ProbeRegressor)
    for head, params in SMALL.items()
] + [ProbeClassifier(head="diff-means", random_state=0)]  # a classifier only


def expected_failed_checks(estimator: Any) -> dict[str, str]:
    expected: dict[str, str] = {}
    if estimator.head not in (
        "linear",
        "diff-means",
    ):  # not every head fails on every machine: non-strict
        expected["check_methods_subset_invariance"] = FLOAT32
    if estimator.head == "alf" and isinstance(estimator, ProbeClassifier):
        expected["check_classifiers_train"] = (
            "ALF's LayerNorm over the check's 2-feature layer keeps only the sign of x1 - x2"
        )
    return expected


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks)
def test_sklearn_estimator_checks(estimator: Any, check: Any) -> None:
    check(estimator)
