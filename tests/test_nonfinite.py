"""NaN or infinity in X is refused everywhere a fitted probe reads X, naming the rows."""

from __future__ import annotations

import numpy as np
import pytest

from probekit import DataError, ProbeClassifier, ablation_sensitivity, layer_attribution
from probekit.estimator.inputs import check_finite


def _data(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 3, 8)).astype(np.float32)
    x[:, 1, 0] += 4.0 * (2 * y - 1)  # layer 1 carries the label
    return x, y


@pytest.fixture(scope="module")
def fitted() -> ProbeClassifier:
    x, y = _data()
    return ProbeClassifier(head="laya", lr=1e-2, epochs=40, random_state=0).fit(x, y)


def _poisoned() -> tuple[np.ndarray, np.ndarray]:
    x, y = _data(40, seed=1)
    x[7, 2, 3] = np.nan
    x[21, 0, 0] = np.inf
    x[30, 1, 5] = -np.inf
    return x, y


@pytest.mark.parametrize(
    "call",
    [
        "predict",
        "predict_proba",
        "score",
        "predict_layers",
        "layer_weights",
        "ablation",
        "attribution",
    ],
)
def test_nonfinite_rows_are_named(fitted, call) -> None:
    x, y = _poisoned()
    calls = {
        "predict": lambda: fitted.predict(x),
        "predict_proba": lambda: fitted.predict_proba(x),
        "score": lambda: fitted.score(x, y),
        "predict_layers": lambda: fitted.predict_layers(x),
        "layer_weights": lambda: fitted.layer_weights(x),
        "ablation": lambda: ablation_sensitivity(fitted, x, y),
        "attribution": lambda: layer_attribution(fitted, x),
    }
    with pytest.raises(DataError, match=r"3 row\(s\) with NaN or infinity \(first: row 7\)"):
        calls[call]()


def test_fit_names_rows_and_clean_input_still_predicts(fitted) -> None:
    x, y = _poisoned()
    with pytest.raises(DataError, match=r"first: row 7"):
        ProbeClassifier(head="linear").fit(x, y)
    clean, y_clean = _data(40, seed=1)
    assert fitted.score(clean, y_clean) > 0.8  # the check does not get in the way of real input


def test_check_finite_offset_for_chunked_reads() -> None:
    import torch

    part = torch.zeros(5, 2)
    part[3, 1] = float("nan")
    with pytest.raises(DataError, match=r"1 row\(s\) .* \(first: row 103\)"):
        check_finite(part, offset=100)
    check_finite(torch.zeros(0, 2))  # empty input passes
