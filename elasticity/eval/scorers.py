"""One interface for every text scorer: ``load_scorer(DIR).score(texts) -> np.ndarray`` (float64).

Kinds of folder (``kind="auto"`` detects them from ``DIR/config.json``):

- ``"elasticity-sentiment"``: the built-in IMDb classifier (`elasticity.eval.sentiment`); the score
  is P(positive).
- ``"hf"``: a local Hugging Face ``AutoModelForSequenceClassification`` folder, or a safe-rlhf
  reward/cost model (``LlamaModelForScore``, e.g. PKU-Alignment/beaver-7b-v1.0-cost) mapped onto
  ``LlamaForSequenceClassification`` (`elasticity.eval.hf_scorer`, torch imported only then). A
  one-logit model's score is ``sign · logit`` (``sign=+1`` for a reward, ``−1`` for a cost, so that
  higher is always better); a classifier's score is P(positive label).

Configs name a scorer by a `scorer_section`; a task that needs one calls
``require_scorer(section, "config.eval.scorer.path")`` first (before any compilation), which raises
`ScorerConfigError` naming that key when no scorer is configured. Those names live in
`elasticity.eval.scorer_config` (no jax, no torch) and are re-exported here; loading a scorer imports
jax (the built-in classifier), torch only for an HF scorer.
"""

from __future__ import annotations

import os

import ml_collections

from elasticity.eval.hf_scorer import HFScorer
from elasticity.eval.scorer_config import (KINDS, SECTION_KEYS, SENTIMENT_FORMAT, Scorer,
                                           ScorerConfigError, detect_kind, require_scorer,
                                           scorer_section)
from elasticity.eval.sentiment import SentimentClassifier

__all__ = ["KINDS", "SECTION_KEYS", "SENTIMENT_FORMAT", "Scorer", "ScorerConfigError", "detect_kind",
           "load_scorer", "require_scorer", "scorer_from_config", "scorer_section"]


def load_scorer(path: str | os.PathLike, *, kind: str = "auto", sign: float = 1.0,
                positive_label: str | int | None = None, allow_pickle: bool = False,
                batch_size: int = 16, max_length: int = 512) -> Scorer:
  """The scorer stored in the folder ``path`` (see the module docstring for the keyword meanings)."""
  if kind not in KINDS:
    raise ValueError(f"load_scorer: kind must be one of {KINDS}, got {kind!r}")
  found = detect_kind(path)
  if kind != "auto" and kind != found:
    raise ValueError(f"{path}: kind {kind!r} was asked for, but the folder holds a {found!r} scorer")
  if found == SENTIMENT_FORMAT:
    return SentimentClassifier.load(path)
  return HFScorer(path, sign=sign, positive_label=positive_label, allow_pickle=allow_pickle,
                  batch_size=batch_size, max_length=max_length)


def _positive_label(value) -> str | int | None:
  if value in ("", None):
    return None
  if isinstance(value, int):
    return value
  return int(value) if str(value).lstrip("-").isdigit() else str(value)


def scorer_from_config(section: ml_collections.ConfigDict, key: str = "scorer") -> Scorer:
  """`load_scorer` with the values of a `scorer_section` (``key`` names it in errors)."""
  require_scorer(section, f"{key}.path")
  if section.sign not in (1, -1, 1.0, -1.0):
    raise ScorerConfigError(f"{key}.sign: must be +1 (reward) or -1 (cost), got {section.sign!r}")
  return load_scorer(section.path, kind=section.kind, sign=float(section.sign),
                     positive_label=_positive_label(section.positive_label),
                     allow_pickle=bool(section.allow_pickle), batch_size=int(section.batch_size),
                     max_length=int(section.max_length))
