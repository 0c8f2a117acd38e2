"""The theory lab (``launch/theory.py``; docs/theory.md). Variants: ``exact`` (Theorem 4.2's table)
and ``pareto`` (the Pareto assumption on real token trees: Alpaca responses, IMDb reviews).

    python -m launch.theory --config=configs/theory.py:exact
    python -m launch.theory --config=configs/theory.py:pareto --config.tokenizers=llama2
    python -m launch.theory --config=configs/theory.py:exact --config.normalization=joint \
        --config.world.alpha_p=2.0 --workdir=/tmp/theory

``world`` holds `elasticity.theory.worlds.WorldConfig`'s fields; each entry of ``scenarios`` is one
joint-training model: ``budget`` = leaves the joint code keeps (0 = unbounded) and ``t_mode`` = where
D_t lies (independent | near_p | near_a).
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("exact", "pareto")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "exact"
  if variant not in VARIANTS:
    raise ValueError(f"configs/theory.py: unknown variant {variant!r}; variants: {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.variant = variant
  if variant == "pareto":
    c.datasets = "alpaca,imdb"         # alpaca responses, imdb train reviews
    c.tokenizers = "llama2,gpt2"       # llama2 | gpt2 | llama3 | qwen (../shared/tokenizers)
    c.depths = "1,2,3,4,6,8"
    c.limit = 0                        # the first N texts of each dataset (0 = all)
    c.prefix_chars = 400               # characters of each text encoded (enough for max(depths))
    c.tail_min_count = 3               # the tail fit keeps nodes seen at least this often
    return c
  c.world = ml_collections.ConfigDict(dict(
      vocab_size=16, length=6, n_leaves_p=20000, n_leaves_a=200, n_leaves_t=2000,
      alpha_p=1.2, alpha_a=1.2, alpha_t=1.2, t_mode="independent", near_mix=0.5,
      k=100.0, l=0.01, base_size=1000, seed=0))
  c.ks = "10,100,1000"                 # k = |D_p| / |D_a|
  c.ls = "0,0.0001,0.001,0.01,0.1"     # l = |D_t| / |D_a|
  c.normalization = "own"              # own | joint | vocab (elasticity.theory.rates)
  c.depth = 0                          # prune the trees to this depth first (0 = whole sequences)
  c.scenarios = ml_collections.ConfigDict({
      "unbounded_independent": dict(budget=0, t_mode="independent"),
      "unbounded_near_p": dict(budget=0, t_mode="near_p"),
      "unbounded_near_a": dict(budget=0, t_mode="near_a"),
      "budget_independent": dict(budget=5000, t_mode="independent"),
      "budget_near_p": dict(budget=5000, t_mode="near_p"),
  })
  return c
