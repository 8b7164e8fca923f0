"""Per-class recall per layer, the confusion matrix and the word-level text view of a run's
report, checked against scikit-learn and against the cache rows and saved attribution."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from probekit.data import word_dataset
from probekit.pipeline import run
from probekit.runs.config import RunConfig

VOCAB = {
    "DET": ["the", "a", "this"],
    "ADJ": ["big", "small", "red", "old"],
    "NOUN": ["cat", "dog", "bird", "fish", "house"],
    "VERB": ["sees", "likes", "chases", "finds"],
}


def _sentences(n: int, seed: int = 0) -> tuple[list[list[str]], list[list[str | None]]]:
    rng = np.random.default_rng(seed)
    words, tags = [], []
    for i in range(n):
        pattern = ["DET", "NOUN", "VERB", "DET", "NOUN"]
        if rng.random() < 0.5:
            pattern.insert(1, "ADJ")
        ws = [VOCAB[t][rng.integers(len(VOCAB[t]))] for t in pattern]
        ts: list[str | None] = list(pattern)
        if i % 5 == 0:  # an unlabelled word: drawn grey, never a row
            ws.append("!")
            ts.append(None)
        words.append(ws)
        tags.append(ts)
    return words, tags


def load_words(source, spec, options):
    words, tags = _sentences(int(source))
    return word_dataset(words, tags, name="wordtoy", spec=spec, options={"limit": options.limit})


@pytest.fixture
def wordtoy_source():
    from probekit.data import sources
    from probekit.data.sources import register_data_source

    before = dict(sources._SOURCES)
    register_data_source("wordtoy", load_words)
    yield
    sources._SOURCES.clear()
    sources._SOURCES.update(before)


@pytest.fixture
def word_run(tiny_bert_dir, tmp_path, wordtoy_source) -> Path:
    cfg = RunConfig(
        name="words",
        model=f"hf:{tiny_bert_dir}",
        data="wordtoy:40",
        unit="word",
        probes=["linear", "laya"],
        out=str(tmp_path / "runs"),
        bootstrap=20,
        figures=[],
        device="cpu",
        precision="fp32",
    )
    (run_dir,) = run(cfg, progress=False)
    return run_dir


def _test_rows(run_dir: Path):
    from probekit import FeatureCache

    cache = FeatureCache.open(run_dir / "cache")
    test = np.asarray(json.loads((run_dir / "split.json").read_text())["test"])
    X = cache.load(pooling=cache.poolings).numpy()[test]
    return cache, test, X, np.asarray(cache.labels)[test]


def test_per_class_recall_and_confusion_equal_scikit_learn(word_run):
    from sklearn.metrics import confusion_matrix, recall_score

    from probekit import ProbeClassifier
    from probekit.report.html import build_figures

    metrics = json.loads((word_run / "metrics.json").read_text())
    cache, test, X, y = _test_rows(word_run)
    names = metrics["label_names"]
    assert cache.unit == "word" and len(names) == 4
    linear = metrics["heads"]["linear"]
    layer_pred = ProbeClassifier.load(word_run / "probes" / "linear").predict_layers(X)
    present = np.unique(y)
    assert linear["per_class_support"] == {names[c]: int((y == c).sum()) for c in present}
    assert list(linear["per_class"]) == metrics["layer_names"]
    for j, layer in enumerate(metrics["layer_names"]):
        want = recall_score(y, layer_pred[:, j], labels=present, average=None, zero_division=0)
        got = [linear["per_class"][layer][names[c]] for c in present]
        assert got == pytest.approx(want.tolist(), abs=1e-12), layer
    best = max(metrics["heads"], key=lambda h: metrics["heads"][h]["balanced_accuracy"])
    assert metrics["confusion"]["head"] == best
    pred = ProbeClassifier.load(word_run / "probes" / best).predict(X)
    counts = np.asarray(metrics["confusion"]["counts"])
    assert counts.shape == (4, 4) and counts.sum() == len(test)
    np.testing.assert_array_equal(counts, confusion_matrix(y, pred, labels=range(4)))

    figs = {f.name: f for f in build_figures(word_run)}
    heat = figs["per-class-recall"].figure.data[0]
    assert list(heat.x) == metrics["layer_names"]
    assert [t.split(" (n=")[0] for t in heat.y] == [names[c] for c in present]
    for j in range(len(metrics["layer_names"])):
        want = recall_score(y, layer_pred[:, j], labels=present, average=None, zero_division=0)
        np.testing.assert_allclose(np.asarray(heat.z)[:, j], want, atol=1e-12)
    _check_cluster_bootstrap(metrics, cache, test, y, layer_pred[:, -1])
    conf = figs["confusion"].figure.data[0]
    shown = np.union1d(y, pred)  # scikit-learn's default labels
    assert list(conf.x) == [names[c] for c in shown]
    np.testing.assert_allclose(
        np.asarray(conf.z), confusion_matrix(y, pred, normalize="true"), atol=1e-12
    )


def _check_cluster_bootstrap(metrics, cache, test, y, pred) -> None:
    """A word run's intervals resample test sentences with all their words: the last layer's
    interval equals scikit-learn over resamples drawn that way (seed 0, 20 resamples)."""
    from sklearn.metrics import balanced_accuracy_score

    groups = np.asarray(cache.samples)[test]
    ids, code = np.unique(groups, return_inverse=True)
    assert metrics["bootstrap"] == {"resamples": 20, "by": "input", "n_units": len(ids)}
    draws = np.random.default_rng(0).integers(0, len(ids), size=(20, len(ids)))
    values = []
    for d in draws:
        rows = np.concatenate([np.flatnonzero(code == g) for g in d])  # whole sentences
        values.append(balanced_accuracy_score(y[rows], pred[rows]))
    got = metrics["heads"]["linear"]["per_layer"][-1]["balanced_accuracy_ci"]
    assert got == pytest.approx(np.percentile(values, [2.5, 97.5]).tolist(), abs=1e-12)


def _check_outlines(fig):
    """Every layer's bars (and so its legend swatch) are outlined in its own colour; the red
    outlines are one trace over exactly the mispredicted cells."""
    wrong, cells = set(), set()
    for trace in fig.data:
        pairs = {(line, tuple(c[:2])) for line, c in zip(trace.y, trace.customdata, strict=True)}
        if trace.name == "wrong prediction":
            assert trace.marker.line.color == "#d62728" and trace.marker.color == "rgba(0,0,0,0)"
            wrong = pairs
            continue
        assert trace.marker.line.color == trace.marker.color, trace.name  # one colour, a str
        cells |= {
            (line, tuple(c[:2]))
            for line, c in zip(trace.y, trace.customdata, strict=True)
            if c[3] is not None and c[4] is not None and c[3] != c[4]
        }
    assert wrong == cells


def test_text_view_words_and_colours_are_the_cache_rows_and_attribution_argmax(word_run):
    from probekit.report.arrays import AttributionFile
    from probekit.report.html import build_figures, write_report

    metrics = json.loads((word_run / "metrics.json").read_text())
    cache, test, _, _ = _test_rows(word_run)
    names, layers = metrics["label_names"], metrics["layer_names"]
    f = AttributionFile(word_run / "attribution" / "laya.safetensors")
    weights, predictions = f["layer_weights"], f["predictions"]
    fig = {g.name: g for g in build_figures(word_run)}["text-layers"].figure
    _check_outlines(fig)
    where = {int(r): i for i, r in enumerate(test)}
    seen: dict[int, dict[int, tuple]] = {}
    for trace in fig.data:
        if trace.name == "wrong prediction":
            continue
        for cell, text, line in zip(trace.customdata, trace.text, trace.y, strict=True):
            _, j, word, true, pred, layer, _ = cell
            s = int(line.split(" ")[0].removeprefix("#"))  # the row: "#<input>", "#<input> (2)"
            assert text == word == cache.texts[s].split(" ")[j]
            assert layer == (None if trace.name == "no label" else trace.name)
            seen.setdefault(s, {})[j] = (word, true, pred, layer)
    assert 0 < len(seen) <= 12
    assert set(seen) <= set(np.asarray(cache.samples)[test].tolist())
    n_colored = 0
    for s, cells in seen.items():
        ws = cache.texts[s].split(" ")
        assert sorted(cells) == list(range(len(ws)))  # every word of the sentence, once
        rows = cache.rows_of(s)
        labelled = {int(cache.positions[r]): r for r in rows}
        for j, (word, true, pred, layer) in cells.items():
            if j not in labelled:
                assert word == "!" and layer is None and true is None
                continue
            p = where[int(labelled[j])]
            assert layer == layers[int(np.argmax(weights[p]))]
            assert true == names[int(cache.labels[labelled[j]])]
            assert pred == names[int(predictions[p])]
            n_colored += 1
    assert n_colored == sum(len(cache.rows_of(s)) for s in seen)
    report = write_report(word_run).read_text()
    assert "which layer each word rests on" in report and "recall of each class" in report


def test_displays_equal_scikit_learn_on_random_predictions():
    from sklearn.metrics import confusion_matrix, recall_score

    from probekit.runs.classes import confusion_counts, per_class_recall
    from probekit.viz import ClassRecallDisplay, ConfusionDisplay, WordLayerDisplay

    rng = np.random.default_rng(3)
    y = rng.choice([0, 1, 3], size=200)  # class 2 never true, class 4 never true nor predicted
    layer_pred = rng.choice([0, 1, 2, 3], size=(200, 3))
    names, layers = ["a", "b", "c", "d", "e"], ["l0", "l1", "l2"]
    table = per_class_recall(y, layer_pred, layers, names)
    assert table["per_class_support"] == {
        "a": (y == 0).sum(),
        "b": (y == 1).sum(),
        "d": (y == 3).sum(),
    }
    disp = ClassRecallDisplay.from_table(table["per_class"], table["per_class_support"])
    for j in range(3):
        want = recall_score(y, layer_pred[:, j], labels=[0, 1, 3], average=None)
        np.testing.assert_allclose(disp.recall[:, j], want, atol=1e-12)
    pred = layer_pred[:, 0]
    counts = confusion_counts(y, pred, len(names))
    conf = ConfusionDisplay.from_counts(counts, names)
    assert conf.class_names == ["a", "b", "c", "d"]  # scikit-learn's labels: true or predicted
    np.testing.assert_allclose(conf.normalized, confusion_matrix(y, pred, normalize="true"))
    np.testing.assert_allclose(np.asarray(conf.figure_.data[0].z), conf.normalized)
    # a long sentence wraps onto numbered rows, each word once, in order
    words = [[f"w{i:02d}" for i in range(40)]]
    view = WordLayerDisplay(words, [[i % 3 for i in range(40)]], layers).plot(line_chars=30)
    cells = sorted(
        (c[1], c[2], line) for t in view.figure_.data for c, line in zip(t.customdata, t.y)
    )
    assert [c[1] for c in cells] == words[0]
    # 3.6 characters a word (3 and a gap): 8 words a 30-character line, 5 lines
    assert {c[2] for c in cells} == {"sentence 0"} | {f"sentence 0 ({k})" for k in range(2, 6)}
    by_trace = {t.name: [c[2] for c in t.customdata] for t in view.figure_.data}
    assert by_trace["l1"] == [f"w{i:02d}" for i in range(1, 40, 3)]


def load_spans(source, spec, options):
    """Each sentence's noun phrases (DET [ADJ] NOUN) as NP spans and its verb as a VP span."""
    from probekit.data import span_dataset

    words, tags = _sentences(int(source))
    spans = []
    for ts in tags:
        row, start = [], 0
        for j, t in enumerate(ts):
            if t == "NOUN":
                row.append((start, j + 1, "NP"))
            elif t == "VERB":
                row.append((j, j + 1, "VP"))
                start = j + 1
        spans.append(row)
    return span_dataset(words, spans, name="spantoy", spec=spec, options={"n": int(source)})


def _unit_run(tiny_bert_dir, tmp_path, unit, data):
    cfg = RunConfig(
        name=unit,
        model=f"hf:{tiny_bert_dir}",
        data=data,
        unit=unit,
        probes=["linear"],
        out=str(tmp_path / "runs"),
        bootstrap=10,
        figures=[],
        device="cpu",
        precision="fp32",
    )
    (run_dir,) = run(cfg, progress=False)
    return run_dir


def _view_cells(run_dir):
    """The text view's cells by line, its layer traces skipped of the outline trace."""
    from probekit.report.html import build_figures

    fig = {g.name: g for g in build_figures(run_dir)}["text-layers"].figure
    _check_outlines(fig)
    lines: dict[str, dict[int, tuple]] = {}
    for trace in fig.data:
        if trace.name == "wrong prediction":
            continue
        for cell, text, line in zip(trace.customdata, trace.text, trace.y, strict=True):
            assert text == cell[2]
            lines.setdefault(line, {})[int(cell[1])] = (cell[2], cell[3], cell[4], cell[5])
    return fig, lines


@pytest.mark.slow
def test_token_view_draws_the_sub_word_tokens_coloured_by_their_rows(
    tiny_bert_dir, tmp_path, wordtoy_source
):
    from transformers import AutoTokenizer

    from probekit.report.arrays import AttributionFile

    run_dir = _unit_run(tiny_bert_dir, tmp_path, "token", "wordtoy:30")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    cache, test, _, _ = _test_rows(run_dir)
    names, layers = metrics["label_names"], metrics["layer_names"]
    f = AttributionFile(run_dir / "attribution" / "linear.safetensors")
    drops, predictions = f["ablation"], f["predictions"]
    fig, lines = _view_cells(run_dir)
    assert "each token" in fig.layout.title.text
    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    where = {int(r): i for i, r in enumerate(test)}
    assert 0 < len(lines) <= 12
    n_colored = 0
    for line, cells in lines.items():
        s = int(line.removeprefix("#").split(" ")[0])
        enc = tok(cache.texts[s].split(" "), is_split_into_words=True)
        real = [t for t, w in enumerate(enc.word_ids()) if w is not None]
        # every sub-word token of the sentence, once, in order, specials left out
        assert sorted(cells) == real
        strings = tok.convert_ids_to_tokens(enc["input_ids"])
        assert [cells[t][0] for t in real] == [strings[t] for t in real]
        rows = {int(cache.positions[r]): r for r in cache.rows_of(s)}
        for t, (_, true, pred, layer) in cells.items():
            if t not in rows:
                assert layer is None and true is None and strings[t] == "!"
                continue
            p = where[int(rows[t])]
            assert layer == layers[int(np.argmax(drops[p]))]
            assert true == names[int(cache.labels[rows[t]])]
            assert pred == names[int(predictions[p])]
            n_colored += 1
    assert n_colored == sum(len(cache.rows_of(int(ln[1:].split(" ")[0]))) for ln in lines)


def test_span_view_draws_one_line_per_span_its_words_coloured(tiny_bert_dir, tmp_path):
    from probekit.data import sources
    from probekit.data.sources import register_data_source
    from probekit.report.arrays import AttributionFile

    before = dict(sources._SOURCES)
    register_data_source("spantoy", load_spans)
    try:
        run_dir = _unit_run(tiny_bert_dir, tmp_path, "span", "spantoy:30")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        cache, test, _, _ = _test_rows(run_dir)
        f = AttributionFile(run_dir / "attribution" / "linear.safetensors")
        drops, predictions = f["ablation"], f["predictions"]
        fig, lines = _view_cells(run_dir)
        data = load_spans("30", "spantoy:30", None)
    finally:
        sources._SOURCES.clear()
        sources._SOURCES.update(before)
    names, layers = metrics["label_names"], metrics["layer_names"]
    assert "each span" in fig.layout.title.text
    where = {int(r): i for i, r in enumerate(test)}
    assert 0 < len(lines) <= 30
    for line, cells in lines.items():
        s, j = int(line.split(" ")[0][1:]), int(line.split(" ")[2])
        ws = cache.texts[s].split(" ")
        assert [cells[w][0] for w in range(len(ws))] == ws  # the whole sentence, in order
        (row,) = [r for r in cache.rows_of(s) if int(cache.positions[r]) == j]
        a, e = data.units.spans[s][j].tolist()
        p = where[int(row)]
        for w, (_, true, pred, layer) in cells.items():
            if a <= w < e:
                assert layer == layers[int(np.argmax(drops[p]))]
                assert (true, pred) == (names[int(cache.labels[row])], names[int(predictions[p])])
            else:
                assert layer is None and true is None
    # every span of the drawn sentences has its line (at most 30 lines)
    drawn = {int(ln.split(" ")[0][1:]) for ln in lines}
    assert len(lines) == min(30, sum(len(cache.rows_of(s)) for s in drawn))
