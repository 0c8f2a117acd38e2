"""KTO configs: labelled single completions (desirable / undesirable) instead of preference pairs.

    --config=configs/kto.py:tiny                 KTO of stories260K on 64 IMDb reviews (CPU smoke run)
    --config=configs/kto.py:llama2-7b            KTO (β = 0.1, λ_D = λ_U = 1) on unpaired HH-RLHF
    --config=configs/kto.py:llama2-7b,tpu_v4     on a TPU v4 pod slice (mesh presets: configs/mesh.py)

``tiny`` labels IMDb training reviews by sentiment (positive = desirable, negative = undesirable) in
the rebound form: the first 8 words are the prompt, the rest of the review the completion (cut to
128 tokens); λ_U = 1.5 balances its 41 desirable against 23 undesirable reviews. The model
presets use the same HH-RLHF harmless-base data as configs/dpo.py, unpaired the standard way (each
pair gives its chosen completion as desirable and its rejected one as undesirable; ``data.n`` counts
pairs), with the paper's SFT hyper-parameters. The reference model is the starting policy; its
log-probs — of each completion and of its fixed mismatched KL completion — are computed once before
training (``objective.reference="precomputed"``), so only one model is in memory during training.
"""

from __future__ import annotations

import ml_collections

from configs import mesh as mesh_presets
from configs import models as model_presets
from configs.sft import paper
from elasticity.train.config import data_section, default_config

OBJECTIVE = dict(name="kto", beta=0.1, desirable_weight=1.0, undesirable_weight=1.0)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = [p for p in (arg or "tiny").split(",") if p]
  model, mesh = parts[0], (parts[1] if len(parts) > 1 else "")
  if len(parts) > 2 or (model == "tiny" and mesh):
    raise ValueError(f"configs/kto.py: variant {arg!r} is not tiny or <model>[,<mesh preset>]")
  c = default_config()
  if model == "tiny":
    c.model.path, c.model.tokenizer = model_presets.model_path("stories260K")
    c.data = data_section(name="imdb", split="train", load_kwargs=dict(prompt_len=8), n=64,
                          template="plain", max_length=128, policy="truncate_response", seed=42,
                          label_field="label", desirable=("pos",))
    c.train.global_batch_size = 8
    c.train.num_steps = 8
    c.train.log_every = 2
    c.optimizer.update(dict(lr=1e-4, schedule="constant"))
    c.checkpoint.every = 0
    mesh_presets.apply(c, "cpu")
    # this selection holds 41 positive, 23 negative reviews: λ_U = 1.5 puts λ_D·n_D / (λ_U·n_U) = 1.19
    # in the [1, 4/3] the KTO paper recommends
    c.objective.update(dict(OBJECTIVE, undesirable_weight=1.5))
  else:
    paper(c)
    c.model.path, c.model.tokenizer = model_presets.model_path(model)
    c.data = data_section(name="hh_rlhf", split="test", template="plain",
                          load_kwargs=dict(on_error="skip"), n=2000, max_length=512, seed=42)
    c.train.global_batch_size = 8
    c.train.num_microbatches = 8
    mesh_presets.apply(c, mesh or model_presets.default_mesh(model))
    c.objective.update(OBJECTIVE)
  c.objective.reference = "precomputed"
  c.lock()
  return c
