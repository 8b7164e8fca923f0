"""Control tasks (Hewitt & Liang, 2019): the label function, and selectivity telling a layer that
carries the label from one that only makes samples identifiable."""

from __future__ import annotations

import numpy as np
import pytest

from probekit import DataError, ProbeClassifier, control_labels, sample_keys, selectivity


def test_control_labels_are_deterministic_per_type_and_seeded():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in rng.integers(0, 300, 3000)]
    y = rng.choice(["neg", "pos", "neu"], size=3000, p=[0.6, 0.3, 0.1])
    a = control_labels(words, y, seed=0)
    np.testing.assert_array_equal(a, control_labels(words, y, seed=0))
    assert set(np.unique(a)) <= {"neg", "pos", "neu"}
    by_word: dict[str, set] = {}
    for w, c in zip(words, a, strict=True):
        by_word.setdefault(w, set()).add(c)
    assert all(len(s) == 1 for s in by_word.values())  # one label per type
    # independent of order: the label of a word does not depend on where it appears
    perm = rng.permutation(3000)
    np.testing.assert_array_equal(control_labels([words[i] for i in perm], y[perm], 0), a[perm])
    other = control_labels(words, y, seed=1)
    assert (other != a).mean() > 0.2
    # a type's control label is unrelated to its task label
    assert abs((a == y).mean() - (0.6**2 + 0.3**2 + 0.1**2)) < 0.06


def test_control_label_distribution_matches_the_empirical_one():
    y = np.repeat([0, 1, 2, 3], [5000, 3000, 1500, 500])
    keys = [f"type-{i}" for i in range(len(y))]  # every sample its own type
    freq = np.bincount(control_labels(keys, y, seed=7), minlength=4) / len(y)
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.015)


def test_sample_keys_hash_image_content():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (3, 8, 8), dtype=np.uint8)
    keys = sample_keys([imgs[0], imgs[1], imgs[0].copy(), imgs[2]])
    assert keys[0] == keys[2] and len({keys[0], keys[1], keys[3]}) == 3
    assert sample_keys(["a", "b", "a"]) == ["a", "b", "a"]
    with pytest.raises(DataError, match="one key per sample"):
        control_labels(["a", "b"], [0, 1, 1])
    with pytest.raises(DataError, match="differ in shape"):
        selectivity([0.9, 0.8], [0.5])


def _per_layer_test_accuracy(x_tr, y_tr, x_te, y_te) -> np.ndarray:
    clf = ProbeClassifier(head="linear", val_size=0.0, C=1.0, device="cpu", random_state=0)
    clf.fit(x_tr, y_tr)
    return (clf.predict_layers(x_te) == y_te[:, None]).mean(0)


def test_selectivity_separates_signal_from_identity():
    """Layer 0 carries the label (noisily); layer 1 is a random 256-d code of the sample's type.
    The identity layer wins on raw accuracy (a linear probe memorises 150 types) but, as it
    fits the control task just as well, loses on selectivity."""
    rng = np.random.default_rng(0)
    n_types, reps, d = 150, 8, 256
    types = np.repeat(np.arange(n_types), reps)
    y_type = rng.integers(0, 2, n_types)
    y = y_type[types]
    signal = rng.normal(size=(len(y), d))
    signal[:, 0] += 1.6 * (2 * y - 1)
    codes = rng.normal(size=(n_types, d))[types] + 0.1 * rng.normal(size=(len(y), d))
    x = np.stack([signal, codes], 1).astype(np.float32)
    keys = [f"type {t}" for t in types]
    y_ctl = control_labels(keys, y, seed=0)
    te = rng.random(len(y)) < 0.25
    task = _per_layer_test_accuracy(x[~te], y[~te], x[te], y[te])
    ctl = _per_layer_test_accuracy(x[~te], y_ctl[~te], x[te], y_ctl[te])
    sel = selectivity(task, ctl)
    assert task[1] > task[0]  # raw accuracy prefers the identity layer
    assert sel[0] > sel[1] + 0.2  # selectivity prefers the label layer
    assert ctl[1] > 0.9 and ctl[0] < 0.7
    np.testing.assert_allclose(sel, task - ctl)


def _identity_task(seed: int = 0):
    """Layer 0 carries the label (noisily); layer 1 is a random 256-d code of the sample's type
    (150 types, 8 samples each, the label a function of the type)."""
    rng = np.random.default_rng(seed)
    n_types, reps, d = 150, 8, 256
    types = np.repeat(np.arange(n_types), reps)
    y = rng.integers(0, 2, n_types)[types]
    signal = rng.normal(size=(len(y), d))
    signal[:, 0] += 1.6 * (2 * y - 1)
    codes = rng.normal(size=(n_types, d))[types] + 0.1 * rng.normal(size=(len(y), d))
    x = np.stack([signal, codes], 1).astype(np.float32)
    return x, y, [f"type {t}" for t in types]


def test_probe_classifier_control_ranks_label_layer_above_identity_layer():
    x, y, keys = _identity_task()
    clf = ProbeClassifier(
        head="linear", control=True, val_size=0.25, C=1.0, device="cpu", random_state=0
    ).fit(x, y, sample_keys=keys)
    task, ctl, sel = clf.layer_scores_, clf.control_scores_, clf.selectivity_
    assert task[1] >= task[0]  # raw validation accuracy does not prefer the label layer
    assert sel[0] > sel[1] + 0.2  # selectivity does
    assert ctl[1] > 0.9 and ctl[0] < 0.7
    np.testing.assert_allclose(sel, task - ctl)
    # the control probe: same split, control labels from control_labels with the derived seed
    seed = clf.control_seed_
    y_ctl = control_labels(keys, y, seed=seed)
    from probekit.estimator.control import control_task_labels
    from probekit.train import stratified_split

    np.testing.assert_array_equal(control_task_labels(clf, keys), y_ctl)
    _, va = stratified_split(y, 0.25, seed)
    ref = ProbeClassifier(head="linear", val_size=0.0, C=1.0, device="cpu", random_state=0)
    ref.fit(x[np.setdiff1d(np.arange(len(y)), va)], y_ctl[np.setdiff1d(np.arange(len(y)), va)])
    from sklearn.metrics import balanced_accuracy_score

    ref_scores = [balanced_accuracy_score(y_ctl[va], p) for p in ref.predict_layers(x[va]).T]
    np.testing.assert_allclose(ctl, ref_scores, atol=3.0 / len(va))  # validation balanced acc.


def test_probe_classifier_control_needs_sample_keys_for_arrays():
    from probekit import ConfigError

    x, y, _ = _identity_task()
    with pytest.raises(ConfigError, match="sample_keys"):
        ProbeClassifier(control=True, device="cpu").fit(x, y)
    with pytest.raises(ConfigError, match="only used with control=True"):
        ProbeClassifier(device="cpu").fit(x, y, sample_keys=["a"] * len(y))
    with pytest.raises(ConfigError, match="val_size"):
        ProbeClassifier(control=True, val_size=0.0, device="cpu").fit(x, y, sample_keys=list(y))
