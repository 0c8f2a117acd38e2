"""The built-in IMDb sentiment classifier's config: ``configs/scorer.py:imdb`` (kept for
``python -m launch.sentiment``, the alias of ``python -m launch.scorer --config=configs/scorer.py:imdb``).

    python -m launch.sentiment --workdir=/work/runs/sentiment
    python -m launch.sentiment --workdir=DIR --config.max_n=2 --config.val_size=5000
"""

from __future__ import annotations

import ml_collections

from configs import scorer


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  return scorer.get_config("imdb")
