"""A real, tiny IMDb sentiment scorer for the experiment tests, trained in seconds.

    path = imdb_scorer(tmp_path / "clf")      # a `load_scorer` folder: P(positive)

The project's own classifier (`elasticity.eval.sentiment`) fitted on every 250th IMDb training review
(100 reviews, both labels) for a few full-batch steps: weak, but a real scorer whose scores spread
over (0, 1) on stories260K's continuations, which is all the rebound's PPO and matched-pair tests need.
"""

from __future__ import annotations

from pathlib import Path

from conftest import require
from elasticity import paths


def imdb_scorer(out: Path, steps: int = 20) -> Path:
  """Train (once per folder) and save the tiny classifier in ``out``; returns ``out``."""
  from elasticity.data import load_dataset
  from elasticity.eval.sentiment import TrainConfig, fit
  out = Path(out)
  if (out / "config.json").exists():
    return out
  require(paths.shared_path("data", "imdb", "aclImdb_labeled_train_test.tar.gz"))
  reviews = list(load_dataset("imdb", "train"))[::250]
  clf = fit([r["text"] for r in reviews], [int(r["label"] == "pos") for r in reviews],
            TrainConfig(steps=steps))
  clf.save(out)
  return out
