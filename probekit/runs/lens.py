"""The lens stage of a run (after fit): the logit lens over the label words and the tuned lens.

* ``label_words``: the logit lens (:func:`probekit.analysis.lens.logit_lens`) of every cached
  layer at each test row; its prediction is the class whose label word gets the highest logit.
  Per-layer accuracy and balanced accuracy (95% bootstrap intervals, on the same resamples as
  the probes) go to ``metrics["logit_lens"]``: where the model *says* the label, beside the
  linear probe's curve, where it *knows* it.
* ``tuned_lens``: a tuned lens (:func:`probekit.analysis.tuned_lens.fit_tuned_lens`) trained on
  the token rows of the train split's inputs and scored, with the logit lens, on the test
  split's: per-layer KL to the final layer and top-1 agreement in ``metrics["tuned_lens"]``,
  the lens in ``RUN/tuned-lens/``. A run's tuned lens: at most :data:`TUNED_LENS_TOKENS`
  training tokens, :data:`TUNED_LENS_STEPS` steps of :data:`TUNED_LENS_BATCH` tokens, the
  training KL over :data:`TUNED_LENS_VOCAB` tokens, scored on at most
  :data:`TUNED_LENS_EVAL_TOKENS` held-out tokens (a few minutes on a CPU for Gemma 3 270M).

:func:`check_lens_options` runs before extraction (the model and the data are loaded by then).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError
from .config import RunConfig
from .folder import read_metrics, read_split
from .tables import write_metrics
from .task import get_task

__all__ = ["LENS_DIR", "check_lens_options", "lens_stage"]

LENS_DIR = "tuned-lens"
TUNED_LENS_STEPS = 100
TUNED_LENS_BATCH = 64
TUNED_LENS_TOKENS = 2048  # training tokens recorded (at most)
TUNED_LENS_EVAL_TOKENS = 256  # held-out tokens scored (at most)
TUNED_LENS_VOCAB = 8192  # the training KL's tokens (the scores use the whole vocabulary)


def check_lens_options(cfg: RunConfig, model: Any, label_names: Any) -> list[int] | None:
    """Check ``label_words`` / ``tuned_lens`` against the loaded model and the data's class
    names.

    Returns:
        the label words' token ids (``None`` without ``label_words``).

    Raises:
        ConfigError: a model without an unembedding, a label word that is not one token, or as
            many words as the data has classes.
    """
    from ..analysis.lens import label_token_ids, require_unembedding

    if cfg.label_words is None and not cfg.tuned_lens:
        return None
    what = "label_words (the logit lens)" if cfg.label_words is not None else "tuned_lens"
    require_unembedding(model, what)
    if cfg.label_words is None:
        return None
    names = [str(n) for n in label_names]
    if len(cfg.label_words) != len(names):
        raise ConfigError(
            f"label_words has {len(cfg.label_words)} words {cfg.label_words}, the data "
            f"{len(names)} classes ({', '.join(names)}): give one word per class, in that order"
        )
    return label_token_ids(model.tokenizer, cfg.label_words)


def _texts_of(cache: Any, rows: np.ndarray) -> list[str]:
    """The texts of the inputs that ``rows`` of the cache come from, in input order."""
    if cache.unit == "sample":
        inputs = np.unique(rows)
    else:
        inputs = np.unique(np.asarray(cache.samples)[rows])
    return [cache.texts[int(i)] for i in inputs]


def lens_stage(cache: Any, cfg: RunConfig, progress: bool = True) -> dict[str, Any]:
    """Add ``logit_lens`` and/or ``tuned_lens`` to the run's ``metrics.json``; returns them.

    The model is loaded again (as the extraction loaded it); the split is ``split.json``'s.
    """
    from ..analysis.lens import logit_lens
    from ..models.loading import load_model
    from .fit import test_resamples

    out: dict[str, Any] = {}
    if cfg.label_words is None and not cfg.tuned_lens:
        return out
    run_dir = cfg.run_dir
    metrics = read_metrics(run_dir)
    split = read_split(run_dir)
    train, test = np.asarray(split["train"]), np.asarray(split["test"])
    model = load_model(cfg.model, **cfg.stage_options("model"))
    if cfg.device is not None and model.placement is None:
        model.to(cfg.device)
    if cfg.label_words is not None:
        from ..cache import cache_subset

        ids = check_lens_options(cfg, model, cache.label_names)
        assert ids is not None  # label_words is set
        pooling = "last" if "last" in cache.poolings else cache.poolings[0]
        scores = logit_lens(model, cache_subset(cache, test), ids, pooling=pooling)  # (n, L, K)
        pred = scores.argmax(-1).numpy()
        y = np.asarray(cache.labels)[test]
        idx = test_resamples(cache, test, cfg)  # the fit's resamples
        task = get_task(metrics)
        # a binary task's lens score: the logit of the second label word minus the first's
        margin = (scores[..., 1] - scores[..., 0]).numpy() if scores.shape[-1] == 2 else None
        out["logit_lens"] = {
            "label_words": list(cfg.label_words),
            "token_ids": ids,
            "pooling": pooling,
            "per_layer": [
                {
                    "layer": name,
                    **task.score(y, pred[:, j], idx, None if margin is None else margin[:, j]),
                }
                for j, name in enumerate(cache.layer_names)
            ],
        }
    if cfg.tuned_lens:
        out["tuned_lens"] = _tuned(cache, cfg, model, train, test, progress)
    metrics.update(out)
    write_metrics(metrics, run_dir)
    return out


def _tuned(
    cache: Any, cfg: RunConfig, model: Any, train: np.ndarray, test: np.ndarray, progress: bool
) -> dict[str, Any]:
    from ..analysis.tuned_lens import fit_tuned_lens, token_states

    if not cache.texts:
        raise ConfigError("tuned_lens needs the run's texts; the cache holds none")
    held = token_states(model, _texts_of(cache, test), max_tokens=TUNED_LENS_EVAL_TOKENS)
    lens = fit_tuned_lens(
        model,
        token_states(model, _texts_of(cache, train), max_tokens=TUNED_LENS_TOKENS),
        held,
        steps=TUNED_LENS_STEPS,
        batch_tokens=TUNED_LENS_BATCH,
        train_vocab=TUNED_LENS_VOCAB,
        seed=cfg.seed,
        progress=progress,
    )
    lens.save(cfg.run_dir / LENS_DIR)
    return {"dir": LENS_DIR, "info": lens.info, **lens.metrics}
