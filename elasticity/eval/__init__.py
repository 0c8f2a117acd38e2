"""Evaluators: scorers of generated text (the built-in IMDb sentiment classifier, any local Hugging
Face classifier or reward/cost model), behind one interface::

    from elasticity.eval import load_scorer
    p = load_scorer(DIR).score(texts)        # np.ndarray, float64

Importing this package loads neither jax nor torch; the names below are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Scorer": "elasticity.eval.scorers",
    "load_scorer": "elasticity.eval.scorers",
    "scorer_section": "elasticity.eval.scorers",
    "scorer_from_config": "elasticity.eval.scorers",
    "require_scorer": "elasticity.eval.scorers",
    "ScorerConfigError": "elasticity.eval.scorers",
    "generations": None,          # submodules: elasticity.eval.generations, .kl, .preference
    "kl": None,
    "preference": None,
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
  if name in _LAZY:
    if _LAZY[name] is None:
      return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module 'elasticity.eval' has no attribute {name!r}")
