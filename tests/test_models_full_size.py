"""Full-size configs: parameter counts from `jax.eval_shape` equal transformers' on the meta device."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from elasticity.models import abstract_model
from elasticity.models.presets import HF_CONFIGS, preset_config

# Counts reported for the released checkpoints (model cards / `num_parameters()`).
PUBLISHED = {"llama2-7b": 6_738_415_616, "llama3-8b": 8_030_261_248, "tinyllama-1.1b": 1_100_048_384,
             "gemma-2b": 2_506_172_416, "gemma-7b": 8_537_680_896}


def flax_count(name):
  state = nnx.state(abstract_model(preset_config(name)), nnx.Param)
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def hf_count(name):
  d = dict(HF_CONFIGS[name])
  cfg = transformers.AutoConfig.for_model(d.pop("model_type"), **d)
  with torch.device("meta"):
    model = transformers.AutoModelForCausalLM.from_config(cfg)
  return sum(p.numel() for p in model.parameters())   # shared (tied) tensors are counted once


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_parameter_count_matches_transformers(name):
  assert flax_count(name) == hf_count(name)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_published(name):
  assert flax_count(name) == PUBLISHED[name]
