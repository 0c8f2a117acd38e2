"""Evaluators: scorers of generated text (the built-in IMDb sentiment classifier, any local Hugging
Face classifier or reward/cost model), behind one interface::

    from elasticity.eval.scorers import load_scorer
    p = load_scorer(DIR).score(texts)        # np.ndarray, float64

Importing this package loads neither jax nor torch: it re-exports only what names a scorer
(`elasticity.eval.scorer_config`). Loading one (`scorers.load_scorer`, `scorers.scorer_from_config`)
and the evaluations (`generations`, `kl`, `preference`) are imported from their modules.
"""

from __future__ import annotations

from elasticity.eval.scorer_config import Scorer, ScorerConfigError, require_scorer, scorer_section

__all__ = ["Scorer", "ScorerConfigError", "require_scorer", "scorer_section"]
