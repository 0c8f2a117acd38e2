"""Preference-optimisation configs (DPO, SimPO) on Anthropic HH-RLHF harmless-base pairs.

    --config=configs/dpo.py:tiny                 DPO of stories260K on 64 HH pairs (CPU smoke run)
    --config=configs/dpo.py:llama2-7b            DPO (β = 0.1) with the paper's SFT hyper-parameters
    --config=configs/dpo.py:llama2-7b,simpo      SimPO (β = 2.0, γ = 0.5)
    --config=configs/dpo.py:llama2-7b,dpo,tpu_v4 on a TPU v4 pod slice (mesh presets: configs/mesh.py)

The reverse step of the rebound experiment (App. B.2) by preference optimisation instead of SFT:
point ``--config.model.path`` at the aligned checkpoint. DPO's reference model is the starting
policy; its log-probs are computed once before training (``objective.reference="precomputed"``), so
only one model is in memory during training.
"""

from __future__ import annotations

import ml_collections

from configs import mesh as mesh_presets
from configs import models as model_presets
from configs.sft import paper
from elasticity.train.config import data_section, default_config

OBJECTIVES = {"dpo": dict(name="dpo", beta=0.1), "simpo": dict(name="simpo", beta=2.0, gamma=0.5)}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [p for p in (arg or "tiny").split(",") if p]
  model, objective = parts[0], (parts[1] if len(parts) > 1 else "dpo")
  mesh = parts[2] if len(parts) > 2 else ""
  if objective not in OBJECTIVES or len(parts) > 3:
    raise ValueError(f"configs/dpo.py: variant {arg!r} is not <model>[,dpo|simpo[,<mesh preset>]]")
  c = default_config()
  hh = dict(name="hh_rlhf", split="test", template="plain", load_kwargs=dict(on_error="skip"))
  if model == "tiny":
    c.model.path, c.model.tokenizer = model_presets.model_path("stories260K")
    c.data = data_section(**hh, n=64, max_length=128, policy="truncate_prompt_left", seed=42)
    c.train.global_batch_size = 8
    c.train.num_steps = 8
    c.optimizer.update(dict(lr=1e-4, schedule="constant"))
    c.checkpoint.every = 0
    mesh_presets.apply(c, "cpu")
  else:
    paper(c)
    c.model.path, c.model.tokenizer = model_presets.model_path(model)
    c.data = data_section(**hh, n=2000, max_length=512, seed=42)
    c.train.global_batch_size = 8
    c.train.num_microbatches = 8
    mesh_presets.apply(c, mesh or model_presets.default_mesh(model))
  c.objective.update(OBJECTIVES[objective])
  c.objective.reference = "precomputed"
  c.lock()
  return c
