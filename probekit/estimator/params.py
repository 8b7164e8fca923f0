"""The scikit-learn estimator contract, without importing scikit-learn until it is used.

Importing scikit-learn costs about 1.3 s (it loads SciPy's statistics); a ``probekit fit`` on a
cache that trains in two seconds should not pay it just to inherit ``BaseEstimator``. The
estimators therefore implement the contract themselves: parameters are the ``__init__``
arguments stored untouched (:meth:`get_params` / :meth:`set_params`, so ``sklearn.clone``,
grid searches and pipelines work), and :meth:`__sklearn_tags__` tells scikit-learn the
estimator's type. scikit-learn is imported only when scikit-learn itself asks (tags, the
``score`` metrics) or to raise its ``NotFittedError``.
"""

from __future__ import annotations

import inspect
from typing import Any, Self

import numpy as np

from ..errors import ConfigError

__all__ = ["EstimatorParams", "check_fitted", "random_seed"]


class EstimatorParams:
    """``get_params`` / ``set_params`` / ``repr`` / tags, as scikit-learn's ``BaseEstimator``.

    Subclasses set ``_estimator_type`` (``"classifier"`` or ``"regressor"``) and store every
    ``__init__`` argument under its own name without changing it.
    """

    _estimator_type: str | None = None

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        names = []
        for p in list(sig.parameters.values())[1:]:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"{cls.__name__}.__init__ may not take *args or **kwargs")
            names.append(p.name)
        return sorted(names)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments (and, with ``deep``, those of nested estimators as
        ``name__param``)."""
        out: dict[str, Any] = {}
        for name in self._param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
            out[name] = value
        return out

    def set_params(self, **params: Any) -> Self:
        """Set constructor arguments (``name__param`` reaches a nested estimator).

        Raises:
            ValueError: a name that is not a parameter (scikit-learn's behaviour).
        """
        valid = self.get_params(deep=True)
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, sep, sub = key.partition("__")
            if name not in valid:
                raise ValueError(
                    f"Invalid parameter {name!r} for estimator {type(self).__name__}. "
                    f"Valid parameters are: {self._param_names()!r}."
                )
            if sep:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
                valid[name] = value
        for name, sub_params in nested.items():
            valid[name].set_params(**sub_params)
        return self

    def __repr__(self) -> str:
        defaults = {
            p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()
        }
        changed = []
        for name in self._param_names():
            value = getattr(self, name)
            default = defaults.get(name, inspect.Parameter.empty)
            same = value is default or (
                not isinstance(value, np.ndarray) and _equal(value, default)
            )
            if not same:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's tags (imported here: only scikit-learn calls this)."""
        from sklearn.utils import ClassifierTags, RegressorTags, Tags, TargetTags

        kind = self._estimator_type
        return Tags(
            estimator_type=kind,
            # a regressor fits (N, K) targets
            target_tags=TargetTags(required=kind is not None, multi_output=kind == "regressor"),
            transformer_tags=None,
            classifier_tags=ClassifierTags() if kind == "classifier" else None,
            regressor_tags=RegressorTags() if kind == "regressor" else None,
        )


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values whose == is not a plain bool differ for repr
        return False


def check_fitted(estimator: Any, attribute: str) -> None:
    """Raise scikit-learn's ``NotFittedError`` unless ``estimator`` has ``attribute``."""
    if not hasattr(estimator, attribute):
        from sklearn.exceptions import NotFittedError

        raise NotFittedError(
            f"This {type(estimator).__name__} instance is not fitted yet. Call 'fit' with "
            "appropriate arguments before using this estimator."
        )


def random_seed(random_state: Any) -> int:
    """A seed in ``[0, 2**31 - 1)`` drawn from ``random_state`` as scikit-learn would:
    ``None`` the global NumPy generator, an int a fresh ``RandomState``, or a ``RandomState``.

    Raises:
        ConfigError: any other value.
    """
    if random_state is None or random_state is np.random:
        rng = np.random.mtrand._rand
    elif isinstance(random_state, (int, np.integer)):
        rng = np.random.RandomState(random_state)
    elif isinstance(random_state, np.random.RandomState):
        rng = random_state
    else:
        raise ConfigError(
            f"random_state={random_state!r} cannot be used to seed a numpy.random.RandomState"
        )
    return int(rng.randint(0, 2**31 - 1))
