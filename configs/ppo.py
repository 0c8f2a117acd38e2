"""PPO configs (``objective.name=ppo``): on-policy RLHF against a project scorer.

    --config=configs/ppo.py:tiny --config.ppo.scorer.path=DIR       stories260K on IMDb prompts (CPU)
    --config=configs/ppo.py:llama2-7b,imdb --config.ppo.scorer.path=DIR    the paper's model, IMDb
    --config=configs/ppo.py:llama2-7b,safety,gpu8 --config.ppo.scorer.path=DIR   BeaverTails prompts

The scorer is any `load_scorer` folder: the IMDb classifier (`python -m launch.scorer
--config=configs/scorer.py:imdb`), the safety scorer (`configs/scorer.py:safety`, P(safe)), or a
local HF reward/cost model (then ``--config.ppo.scorer.sign=+1|-1`` is required).
``--config.ppo.reward_sign=-1`` rewards the scorer's *negative* side (the rebound's reverse step).
Every PPO key, its default and where the default comes from: docs/ppo.md.
"""

from __future__ import annotations

import ml_collections

from configs import mesh as mesh_presets
from configs import models as model_presets
from configs.sft import paper
from elasticity.train.config import data_section, default_config, ppo_section

TASKS = {
    "imdb": dict(name="imdb", split="train", template="plain", n=2000,
                 load_kwargs=dict(prompt_len=8)),
    "safety": dict(name="beavertails_prompts", split="test", template="alpaca", n=0),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [p for p in (arg or "tiny").split(",") if p]
  model = parts[0]
  task = parts[1] if len(parts) > 1 else "imdb"
  mesh = parts[2] if len(parts) > 2 else ""
  if task not in TASKS or len(parts) > 3:
    raise ValueError(f"configs/ppo.py: variant {arg!r} is not tiny or <model>[,imdb|safety[,<mesh>]]")
  c = default_config()
  c.ppo = ppo_section()
  c.objective.name = "ppo"
  if model == "tiny":
    c.model.path, c.model.tokenizer = model_presets.model_path("stories260K")
    c.data = data_section(**{**TASKS[task], "n": 64}, max_length=64, seed=42)
    c.train.global_batch_size = 8
    c.train.num_steps = 4
    c.ppo.max_new_tokens = 16
    c.ppo.ppo_epochs = 2
    c.ppo.num_minibatches = 1       # 8 rows: one per fake CPU device of the tests' mesh
    c.optimizer.update(dict(lr=1e-3, schedule="constant", warmup_steps=0))
    c.checkpoint.every = 2
    c.metrics.tensorboard = False
    mesh_presets.apply(c, "cpu")
  else:
    paper(c)                        # lr 1e-5 constant, bf16 compute, remat (safe-rlhf actor lr 1e-5)
    c.model.path, c.model.tokenizer = model_presets.model_path(model)
    c.data = data_section(**TASKS[task], max_length=512, seed=42)
    c.train.global_batch_size = 16
    c.train.num_microbatches = 2
    c.train.num_epochs = 1
    c.ppo.max_new_tokens = 128
    mesh_presets.apply(c, mesh or model_presets.default_mesh(model))
  c.lock()
  return c
