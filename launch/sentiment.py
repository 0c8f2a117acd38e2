"""The IMDb sentiment classifier: an alias of ``python -m launch.scorer --config=configs/scorer.py:imdb``.

    python -m launch.sentiment --workdir=/work/runs/sentiment [--config.max_n=2 ...]

Same flags, keys and output as `launch.scorer` (whose default variant is ``imdb``).
"""

from __future__ import annotations

from launch import app
from launch.scorer import main

if __name__ == "__main__":
  app.run(main)
