"""The theory lab (``launch/theory.py``; docs/theory.md). Variants: ``exact`` (Theorem 4.2's table),
``pareto`` (the Pareto assumption on real token trees: Alpaca responses, IMDb reviews),
``pareto_model`` (the same trees' leaf masses from SmolLM2-135M-Instruct's probabilities), ``lab`` (the
law measured on small Llamas trained in a world, and resistance / rebound / scaling / rounds there:
the main job, `python -m launch.main`) and ``lab_small`` (the same pipeline, reduced, for tests).

    python -m launch.theory --config=configs/theory.py:exact
    python -m launch.theory --config=configs/theory.py:pareto --config.tokenizers=llama2
    python -m launch.theory --config=configs/theory.py:pareto_model --config.limit=500
    python -m launch.theory --config=configs/theory.py:exact --config.normalization=joint \
        --config.world.alpha_p=2.0 --workdir=/tmp/theory

``world`` holds `elasticity.theory.worlds.WorldConfig`'s fields; each entry of ``scenarios`` is one
joint-training model: ``budget`` = leaves the joint code keeps (0 = unbounded) and ``t_mode`` = where
D_t lies (independent | near_p | near_a).
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("exact", "pareto", "pareto_model", "lab", "lab_small")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  variant = arg or "exact"
  if variant not in VARIANTS:
    raise ValueError(f"configs/theory.py: unknown variant {variant!r}; variants: {VARIANTS}")
  c = ml_collections.ConfigDict()
  c.variant = variant
  if variant in ("lab", "lab_small"):
    return lab_config(variant)
  if variant == "pareto":
    c.datasets = "alpaca,imdb"         # alpaca responses, imdb train reviews
    c.tokenizers = "llama2,gpt2"       # llama2 | gpt2 | llama3 | qwen (../shared/tokenizers)
    c.depths = "1,2,3,4,6,8"
    c.limit = 0                        # the first N texts of each dataset (0 = all)
    c.prefix_chars = 400               # characters of each text encoded (enough for max(depths))
    c.tail_min_count = 3               # the tail fit keeps nodes seen at least this often
    return c
  if variant == "pareto_model":        # elasticity.theory.pareto_model
    c.datasets = "alpaca"              # alpaca responses | imdb train reviews (comma list)
    c.limit = 500                      # the first N texts of each dataset (0 = all)
    c.depths = "1,2,3,4,5,6,7,8"       # node depths; responses are cut to max(depths) tokens
    c.model = ""                       # checkpoint ("" = SmolLM2-135M-Instruct, paths.smollm2_gguf())
    c.tokenizer = ""                   # tokenizer path ("" = the model file's own)
    c.dtype = "float32"                # float32 | bfloat16
    c.start = "bos"                    # context each prefix is scored from: "bos" or a literal text
    c.batch_size = 32                  # distinct sequences per forward
    c.prefix_chars = 400               # characters of each text encoded (enough for max(depths))
    c.tail_min_n = 50                  # the Clauset tail cut keeps at least this many nodes
    c.tail_min_count = 3               # the empirical tail fit keeps nodes seen at least this often
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


def lab_config(variant: str) -> ml_collections.ConfigDict:
  """The network lab (`elasticity.theory.lab`). ``lab``: ≤ 10 minutes on 2 CPU cores."""
  c = ml_collections.ConfigDict()
  c.variant = variant
  c.name = "theory_lab"
  c.seeds = "0,1,2"
  c.parts = "law,resistance,rebound,scaling,rounds"
  # A world the network can learn in a few hundred steps; D_t near D_p (the paper's negative data
  # resembles pre-training data).
  c.world = ml_collections.ConfigDict(dict(
      vocab_size=16, length=4, n_leaves_p=300, n_leaves_a=30, n_leaves_t=60,
      alpha_p=1.2, alpha_a=1.2, alpha_t=1.2, t_mode="near_p", near_mix=0.5,
      k=100.0, l=0.0, base_size=1000, seed=0))
  c.net = ml_collections.ConfigDict(dict(hidden=64, layers=2, heads=4, mlp_ratio=2, batch=128,
                                         rows_a=32, rows_t=32, normalization="own", eval_samples=0,
                                         eval_chunk=2048))
  c.law = ml_collections.ConfigDict(dict(
      ks="10,100,1000", ls="0,0.1,0.2,0.4", pretrain_steps=300, pretrain_lr=3e-3,
      steps=40, lr=3e-4, finetune_steps=20, finetune_every=5, align_lr=3e-3,
      exact_ls="0,0.001,0.003,0.01,0.03,0.1,0.3,1"))
  c.resistance = ml_collections.ConfigDict(dict(k=100.0, checkpoints="10,20,40", steps=20,
                                                samples=1024))
  c.rebound = ml_collections.ConfigDict(dict(k=100.0, n_pos="10,40", n_neg="0,2,5,10,20"))
  c.scaling = ml_collections.ConfigDict(dict(k=100.0, models="16x1,32x1,64x2",
                                             pretrain_steps="100,300", n_pos=20, n_neg="0,2,5,10"))
  c.rounds = ml_collections.ConfigDict(dict(k=100.0, rounds=3, align_steps=20, perturb_steps=10))
  if variant == "lab_small":
    c.name = "theory_lab_small"
    c.seeds = "0,1"
    c.world.update(n_leaves_p=60, n_leaves_a=10, n_leaves_t=20, length=3)
    c.net.update(hidden=16, layers=1, heads=2, batch=32, rows_a=8, rows_t=8, eval_chunk=128)
    c.law.update(ks="10,100", ls="0,0.2,0.4", pretrain_steps=20, steps=4, finetune_steps=4,
                 finetune_every=2, lr=3e-3, exact_ls="0,0.01,0.1,1")
    c.resistance.update(checkpoints="2,4", steps=3, samples=64)
    c.rebound.update(n_pos="3", n_neg="0,2,4")
    c.scaling.update(models="16x1", pretrain_steps="10,20", n_pos=3, n_neg="0,2")
    c.rounds.update(rounds=2, align_steps=3, perturb_steps=2)
  return c
