"""The logit lens and the tuned lens (issue #19) on tiny random causal LMs saved as hf: folders,
checked against the causal LM's own logits (transformers' AutoModelForCausalLM)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probekit import load_model
from probekit.analysis.lens import label_token_ids, lens_logits, logit_lens, parse_label_words
from probekit.analysis.tuned_lens import (
    TunedLens,
    fit_tuned_lens,
    kl_divergence,
    lens_divergence,
    token_states,
)
from probekit.errors import ConfigError

TEXTS = [
    "the cat sat on the mat and looked at the dog",
    "a probe reads the hidden states of a frozen model",
    "positive words and negative words",
]


WORDS = (
    "the a cat dog sat ran on under mat tree and then looked at saw big small red probe reads "
    "hidden states of frozen model positive negative words good great nice happy fine kind bad "
    "awful sad grim mean cruel day 0 1 2"
).split()


def _word_tokenizer(path: str) -> None:
    """A whole-word tokenizer over :data:`WORDS` (48 ids): a small vocabulary keeps the tests'
    (tokens, vocab) logits small."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[EOS]", "[BOS]", "[UNK]", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]"
    )
    fast.save_pretrained(path)


def _causal_dir(tmp_path_factory, minilm_tokenizer_dir, kind: str) -> str:
    import transformers as T
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    small = {
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 128,
    }
    path = str(tmp_path_factory.mktemp(kind))
    if kind == "gemma3":  # tied head, softcapped logits, a 48-token vocabulary
        cfg = T.Gemma3TextConfig(
            vocab_size=len(WORDS) + 4,
            head_dim=16,
            sliding_window=4,
            final_logit_softcapping=30.0,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
            **small,
        )
        T.Gemma3ForCausalLM(cfg).save_pretrained(path)
        _word_tokenizer(path)
    else:  # untied lm_head.weight, MiniLM's WordPiece tokenizer (sub-words)
        cfg = T.LlamaConfig(vocab_size=30522, tie_word_embeddings=False, **small)
        T.LlamaForCausalLM(cfg).save_pretrained(path)
        AutoTokenizer.from_pretrained(minilm_tokenizer_dir).save_pretrained(path)
    return path


def _load(tmp_path_factory, minilm_tokenizer_dir, kind: str):
    from transformers import AutoModelForCausalLM

    path = _causal_dir(tmp_path_factory, minilm_tokenizer_dir, kind)
    return load_model(f"hf:{path}"), AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def tiny_gemma(tmp_path_factory, minilm_tokenizer_dir):
    """A 2-layer, 32-wide random Gemma3ForCausalLM (tied, softcapped head) and its causal LM."""
    return _load(tmp_path_factory, minilm_tokenizer_dir, "gemma3")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, minilm_tokenizer_dir):
    """A 2-layer, 32-wide random LlamaForCausalLM (untied lm_head.weight)."""
    return _load(tmp_path_factory, minilm_tokenizer_dir, "llama")


@pytest.fixture(params=["tiny_gemma", "tiny_llama"])
def causal(request):
    return request.getfixturevalue(request.param)


def _hidden(model, texts):
    inputs = model.preprocess(texts)
    with torch.no_grad():
        out = model.model(**inputs, output_hidden_states=True)
    return inputs, out.hidden_states


def test_hf_causal_decoder_gets_its_lm_head(causal):
    model, ref = causal
    assert model.unembed is not None and model.final_norm is model.model.norm
    inputs, hs = _hidden(model, TEXTS)
    with torch.no_grad():
        logits = ref(**inputs).logits  # (B, S, V)
    last = logits[:, -1]  # left padding: the last token of every text
    h = hs[-1][:, -1]
    torch.testing.assert_close(lens_logits(model, h, normed=True), last, rtol=1e-5, atol=1e-5)
    ids = [5, 17, 40]
    torch.testing.assert_close(
        lens_logits(model, h, normed=True, token_ids=ids), last[:, ids], rtol=1e-5, atol=1e-5
    )


def test_logit_lens_last_layer_is_the_models_logits_inner_layers_by_hand(causal):
    model, ref = causal
    inputs, hs = _hidden(model, TEXTS)
    feats = torch.stack([h[:, -1] for h in hs], dim=1)  # (N, L+1, D) last-token states
    ids = [7, 10, 21, 40]
    scores = logit_lens(model, feats, ids, batch_size=2)  # (N, L+1, K), two batches
    assert scores.shape == (len(TEXTS), len(hs), len(ids))
    with torch.no_grad():
        own = ref(**inputs).logits[:, -1][:, ids]
        torch.testing.assert_close(scores[:, -1], own, rtol=1e-5, atol=1e-5)
        norm, head = ref.model.norm, ref.lm_head  # by hand, from the causal LM's own modules
        cap = getattr(ref.config, "final_logit_softcapping", None)
        for layer in range(len(hs) - 1):
            want = head(norm(hs[layer][:, -1]))
            want = torch.tanh(want / cap) * cap if cap else want
            torch.testing.assert_close(scores[:, layer], want[:, ids], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(scores[:, 0], scores[:, -1])  # the layers differ


def test_label_words_must_be_one_token(tiny_llama):
    model, _ = tiny_llama
    words = parse_label_words(" positive, negative")
    assert words == [" positive", " negative"]
    ids = label_token_ids(model.tokenizer, words)
    assert ids == [model.tokenizer.convert_tokens_to_ids(w.strip()) for w in words]
    with pytest.raises(ConfigError, match=r"'probekitish' is \d+ tokens \['pro") as err:
        label_token_ids(model.tokenizer, ["positive", "probekitish"])
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="share a token"):
        label_token_ids(model.tokenizer, ["positive", " positive"])


def test_model_without_unembedding_is_refused(tiny_bert_dir):
    bert = load_model(f"hf:{tiny_bert_dir}")
    assert bert.unembed is None
    with pytest.raises(ConfigError, match="needs a causal LM with its unembedding"):
        logit_lens(bert, torch.zeros(2, len(bert.layers), 32), [1, 2])


def test_kl_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 11)) * 3, rng.normal(size=(5, 11)) * 3
    p = np.exp(a - a.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.exp(b - b.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    want = (p * np.log(p / q)).sum(1)
    got = kl_divergence(torch.log(torch.as_tensor(p, dtype=torch.float32)), torch.tensor(b))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_identity_translators_are_the_logit_lens(causal):
    model, _ = causal
    states = token_states(model, TEXTS)  # (T, L+1, D)
    n_tokens = sum(len(model.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS)
    assert states.shape == (n_tokens, len(model.layers), 32)
    lens = TunedLens(model.layer_names, 32)
    for layer in range(len(model.layers)):
        want = lens_logits(model, states[:, layer], normed=layer == len(model.layers) - 1)
        assert torch.equal(lens.logits(model, states[:, layer], layer), want)
    tuned = lens_divergence(model, states, lens)
    logit = lens_divergence(model, states, None)
    assert tuned == logit and logit["kl"][-1] == 0.0 and logit["top1"][-1] == 1.0
    # the per-layer KL by hand, in numpy float64
    h0 = states[:, 0]
    final = lens_logits(model, states[:, -1], normed=True).double().numpy()
    inner = lens_logits(model, h0, normed=False).double().numpy()
    logp = final - np.log(np.exp(final - final.max(1, keepdims=True)).sum(1, keepdims=True))
    logp -= final.max(1, keepdims=True)
    logq = inner - inner.max(1, keepdims=True)
    logq -= np.log(np.exp(logq).sum(1, keepdims=True))
    want = float((np.exp(logp) * (logp - logq)).sum(1).mean())
    assert logit["kl"][0] == pytest.approx(want, rel=1e-4)
    agree = float((inner.argmax(1) == final.argmax(1)).mean())
    assert logit["top1"][0] == pytest.approx(agree)


def test_training_lowers_held_out_kl_and_round_trips(tiny_gemma, tmp_path):
    model, _ = tiny_gemma
    rng = np.random.default_rng(0)
    words = "the a cat dog sat ran on under mat tree and then looked at saw big small red".split()
    texts = [" ".join(rng.choice(words, 12)) for _ in range(48)]
    lens = fit_tuned_lens(
        model, texts[:40], texts[40:], steps=40, batch_tokens=32, lr=1e-2, precision="fp32"
    )
    tuned, logit = lens.metrics["tuned"], lens.metrics["logit"]
    assert tuned["tokens"] == logit["tokens"] > 50
    inner = range(len(model.layers) - 1)
    assert all(tuned["kl"][i] < 0.8 * logit["kl"][i] for i in inner), (tuned, logit)
    assert lens.info["train_kl_last"] < lens.info["train_kl_first"]
    again = TunedLens.load(lens.save(tmp_path / "lens"))
    assert again.layer_names == lens.layer_names and again.metrics == lens.metrics
    assert again.info == lens.info
    for a, b in zip(lens.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    held = token_states(model, texts[40:])
    assert lens_divergence(model, held, again) == tuned
    with pytest.raises(ConfigError, match="holds no tuned lens"):
        TunedLens.load(tmp_path)


# ------------------------------------------------------------------------------------ in a run

POS = ["good", "great", "nice", "happy", "fine", "kind"]
NEG = ["bad", "awful", "sad", "grim", "mean", "cruel"]


@pytest.fixture
def word_csv(tmp_path):
    path = tmp_path / "words.csv"
    rows = [f"the {w} day {i},positive" for i in range(3) for w in POS] + [
        f"the {w} day {i},negative" for i in range(3) for w in NEG
    ]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def _cfg(model, data, tmp_path, **kw):
    from probekit.runs.config import RunConfig

    return RunConfig(
        name="lens",
        model=model,
        data=f"csv:{data}",
        probes=["linear"],
        out=str(tmp_path / "runs"),
        bootstrap=20,
        figures=[],
        **kw,
    )


@pytest.mark.slow
def test_run_logit_and_tuned_lens(tiny_gemma, word_csv, tmp_path, monkeypatch):
    import json

    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from probekit import FeatureCache
    from probekit.pipeline import run
    from probekit.runs import lens as lens_stage

    monkeypatch.setattr(lens_stage, "TUNED_LENS_STEPS", 5)
    model, ref = tiny_gemma
    cfg = _cfg(
        model.spec,
        word_csv,
        tmp_path,
        label_words=" negative, positive",
        tuned_lens=True,
        template="Word: {text}\\nSentiment:",  # a run option: the \\n becomes a newline
    )
    assert cfg.label_words == [" negative", " positive"]
    (run_dir,) = run(cfg, progress=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    lens = metrics["logit_lens"]
    assert lens["label_words"] == [" negative", " positive"] and lens["pooling"] == "last"
    cache = FeatureCache.open(run_dir / "cache")
    assert list(cache.label_names) == ["negative", "positive"]
    test = np.asarray(json.loads((run_dir / "split.json").read_text())["test"])
    x = cache.load(pooling="last")[test]  # (n, L+1, D)
    y = np.asarray(cache.labels)[test]
    cap = ref.config.final_logit_softcapping
    with torch.no_grad():
        for j, row in enumerate(lens["per_layer"]):
            h = x[:, j] if j == x.shape[1] - 1 else ref.model.norm(x[:, j])
            logits = torch.tanh(ref.lm_head(h) / cap) * cap
            pred = logits[:, lens["token_ids"]].argmax(-1).numpy()
            assert row["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
            margin = (logits[:, lens["token_ids"][1]] - logits[:, lens["token_ids"][0]]).numpy()
            assert row["auroc"] == pytest.approx(roc_auc_score(y, margin), abs=1e-6)
    tuned = metrics["tuned_lens"]
    assert tuned["info"]["steps"] == 5 and tuned["tuned"]["layers"] == model.layer_names
    assert len(tuned["tuned"]["kl"]) == len(tuned["logit"]["kl"]) == len(model.layers)
    saved = TunedLens.load(run_dir / "tuned-lens")
    assert saved.metrics["tuned"] == tuned["tuned"]
    report = (run_dir / "report.html").read_text()
    assert "Where the model knows vs where it says" in report and "Tuned lens (Belrose" in report
    assert "Logit lens vs linear probe: AUROC" in report and "lens AUROC [95% CI]" in report
    assert "template <code>&#x27;Word: {text}\\nSentiment:&#x27;</code> · read prompt" in report
    assert FeatureCache.open(run_dir / "cache").manifest["prompt"]["template"] == (
        "Word: {text}\nSentiment:"
    )


def test_run_lens_options_are_checked_before_extraction(
    tiny_llama, tiny_bert_dir, word_csv, tmp_path
):
    from probekit.pipeline import run

    model, _ = tiny_llama
    bad = {
        "needs a causal LM with its unembedding": (f"hf:{tiny_bert_dir}", " negative, positive"),
        r"label_words has 3 words .* 2 classes \(negative, positive\)": (
            model.spec,
            " negative, positive, neutral",
        ),
        r"label word 'probekitish' is \d+ tokens": (model.spec, "negative,probekitish"),
    }
    for message, (spec, words) in bad.items():
        cfg = _cfg(spec, word_csv, tmp_path, label_words=words)
        with pytest.raises(ConfigError, match=message):
            run(cfg, progress=False)
        assert not (cfg.run_dir / "cache" / "manifest.json").exists()
    with pytest.raises(ConfigError, match="must include last"):
        _cfg(model.spec, word_csv, tmp_path, label_words="a,b", pooling="mean")
