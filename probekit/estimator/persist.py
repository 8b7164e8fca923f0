"""Save and load a fitted :class:`~probekit.estimator.ProbeClassifier`: ``model.safetensors``
(``model_``'s state dict) and ``config.json`` (everything else). No pickle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError
from ..probes import create_probe
from .model import FeatureNorm, ProbeModel
from .params import check_fitted

if TYPE_CHECKING:  # pragma: no cover
    from .base import ProbeEstimator as ProbeClassifier

__all__ = ["FORMAT_VERSION", "load_probe", "save_probe"]

FORMAT_VERSION = 1


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.device):
        return str(obj)
    if isinstance(obj, Tensor):
        return _jsonable(obj.tolist())
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in config.json")


def save_probe(clf: ProbeClassifier, path: str | os.PathLike[str]) -> Path:
    """Write ``model.safetensors`` and ``config.json`` of a fitted ``clf`` to the folder ``path``."""
    from safetensors.torch import save_file

    self = clf
    check_fitted(self, "model_")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
    save_file(state, str(path / "model.safetensors"))
    params = self.get_params(deep=False)
    if not (
        params["random_state"] is None or isinstance(params["random_state"], (int, np.integer))
    ):
        params["random_state"] = None
    if isinstance(params.get("class_weight"), Mapping):  # JSON keys are text: keep the labels
        params["class_weight"] = {
            "label_weights": [[k, v] for k, v in params["class_weight"].items()]
        }
    config = {
        "format_version": FORMAT_VERSION,
        "params": _jsonable(params),
        **_jsonable(self._task_state()),
        "dims": list(self.dims_),
        "tokens_per_layer": self.tokens_per_layer_,
        "layer_names": list(self.layer_names_),
        "input_norm": self.model_.norm.mode,
        "head_kwargs": self.head_kwargs_,
        "best_params": _jsonable(self.best_params_),
        "best_score": self.best_score_,
        "best_epoch": self.best_epoch_,
        "layer_scores": _jsonable(self.layer_scores_),
        "selected_layer": self.selected_layer_,
        "history": _jsonable(self.history_),
    }
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


def load_probe(
    cls: type[ProbeClassifier], path: str | os.PathLike[str], device: str | None = None
) -> ProbeClassifier:
    """Rebuild a classifier of class ``cls`` saved by :func:`save_probe`; predictions are identical."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").is_file():
        raise DataError(f"{path} holds no saved probe (no config.json)")
    config = json.loads((path / "config.json").read_text())
    if config.get("format_version") != FORMAT_VERSION:
        raise DataError(f"unsupported probe format {config.get('format_version')!r} in {path}")
    if config.get("task", "classification") != cls._task:
        raise DataError(
            f"{path} holds a {config.get('task', 'classification')} probe; load it with "
            f"{'ProbeRegressor' if config.get('task') == 'regression' else 'ProbeClassifier'}.load"
        )
    params = config["params"]
    weights = params.get("class_weight")
    if isinstance(weights, dict) and set(weights) == {"label_weights"}:
        params["class_weight"] = {k: v for k, v in weights["label_weights"]}
    if device is not None:
        params["device"] = device
    clf = cls(**params)
    clf._load_task_state(config)
    clf._set_layout(
        {
            "dims": config["dims"],
            "p": config["tokens_per_layer"],
            "names": config["layer_names"],
            "n_input_layers": len(config["dims"]),
            "sel": list(range(len(config["dims"]))),
        },
        None,
    )
    clf.device_ = clf._device()
    if clf.device_.type == "cuda" and not torch.cuda.is_available():
        clf.device_ = torch.device("cpu")
    n_tokens, dim = clf.n_layers_ * clf.tokens_per_layer_, max(clf.dims_)
    head = create_probe(clf.head, **config["head_kwargs"])
    model = ProbeModel(
        FeatureNorm(config["input_norm"], n_tokens, dim), head, torch.zeros(n_tokens, dim)
    )
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    clf.head_kwargs_ = config["head_kwargs"]
    clf.feature_mean_ = model.feature_mean.numpy().copy()
    clf.model_ = model.to(clf.device_).eval()
    clf.best_params_ = config["best_params"]
    clf.best_score_ = config["best_score"]
    clf.best_epoch_ = config["best_epoch"]
    ls = config["layer_scores"]
    clf.layer_scores_ = np.asarray(ls) if ls is not None else None
    clf.selected_layer_ = config["selected_layer"]
    clf.history_ = config["history"]
    clf.grid_scores_ = None
    clf.grid_configs_ = None
    return clf
