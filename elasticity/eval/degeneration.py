"""Degenerate text: how much of a continuation repeats itself (a check no classifier replaces).

A sentiment or safety classifier scores whatever it is given: a model that collapsed into "you you you
…" gets a confident label, and a rebound point made of such text moves the score for a reason that has
nothing to do with sentiment. This module measures the collapse from the text alone, with no model and
no tokenizer, so it applies to any saved generations (`elasticity.experiments.rebound.rescore`'s
archive included) and to every model alike.

Words are lower-cased ``\\w+`` runs and single punctuation marks. For a text of words w_1 … w_k, the
**repetition rate** rep-n (Welleck et al. 2019, "seq-rep-n") is the share of its n-grams that are a
repeat of an n-gram met before in the same text:

    rep_n = 1 − |distinct n-grams| / |n-grams|           (0 when the text has at most one n-gram)

so 0 for text that never repeats a phrase, and → 1 for a loop of one phrase. A text is **degenerate**
when rep-4 ≥ 0.5 (half of its 4-grams repeat): sampled text of a healthy model at temperature 1 sits
near 0 over 48 tokens; the collapsed KTO run of ``docs/results/rebound-algorithms.md`` sits near 1.

    from elasticity.eval import degeneration
    degeneration.rep_n("you you you you you", 2)          # 0.75
    degeneration.summary(texts)   # {"texts", "rep_4", "degenerate_share", ...}
"""

from __future__ import annotations

import re
from collections.abc import Sequence

N = 4                 # the n of rep-n in `summary`
THRESHOLD = 0.5       # rep-n at or above which a text counts as degenerate

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
  """The text's words: lower-cased ``\\w+`` runs and single punctuation marks."""
  return _WORD.findall(text.lower())


def rep_n(text: str, n: int = N) -> float:
  """The share of the text's word n-grams that repeat an earlier one (module docstring)."""
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f"rep_n: n must be an integer >= 1, got {n!r}")
  w = words(text)
  grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
  if len(grams) < 2:
    return 0.0
  return 1.0 - len(set(grams)) / len(grams)


def summary(texts: Sequence[str], n: int = N, threshold: float = THRESHOLD) -> dict[str, float]:
  """rep-n of a set of texts: its mean, its largest value, and the share of degenerate texts."""
  if isinstance(texts, str):
    raise TypeError("summary: texts must be a sequence of strings, not one string")
  if not 0.0 < float(threshold) <= 1.0:
    raise ValueError(f"summary: threshold must be in (0, 1], got {threshold!r}")
  reps = [rep_n(t, n) for t in texts]
  if not reps:
    return {"texts": 0, f"rep_{n}": float("nan"), f"rep_{n}_max": float("nan"),
            "degenerate_share": float("nan")}
  return {"texts": len(reps), f"rep_{n}": sum(reps) / len(reps), f"rep_{n}_max": max(reps),
          "degenerate_share": sum(r >= threshold for r in reps) / len(reps)}


__all__ = ["words", "rep_n", "summary", "N", "THRESHOLD"]
