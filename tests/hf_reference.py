"""Helpers for tests that compare against `transformers` (torch): tiny random configs and models."""

from __future__ import annotations

import numpy as np
import torch
import transformers

TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            max_position_embeddings=256)

# name → (transformers config class, kwargs): one per family variant the paper uses.
VARIANTS = {
    "llama2": (transformers.LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=4)),
    "llama3": (transformers.LlamaConfig, dict(
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 64})),
    "tinyllama": (transformers.LlamaConfig, dict(num_attention_heads=8, num_key_value_heads=2)),
    "smollm2": (transformers.LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=2,
                                               tie_word_embeddings=True)),
    "llama_head_dim_bias": (transformers.LlamaConfig, dict(num_attention_heads=4, num_key_value_heads=2,
                                                           head_dim=24, attention_bias=True)),
    "qwen2": (transformers.Qwen2Config, dict(num_attention_heads=4, num_key_value_heads=2,
                                             tie_word_embeddings=True, rope_theta=1000000.0)),
    "qwen2_untied": (transformers.Qwen2Config, dict(num_attention_heads=4, num_key_value_heads=4,
                                                    tie_word_embeddings=False)),
    "gemma": (transformers.GemmaConfig, dict(num_attention_heads=4, num_key_value_heads=1, head_dim=32)),
    "gemma2": (transformers.Gemma2Config, dict(
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=4,
        query_pre_attn_scalar=24, attn_logit_softcapping=5.0, final_logit_softcapping=3.0)),
    "gemma3": (transformers.Gemma3TextConfig, dict(
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        sliding_window=4, query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})),
}


def tiny_hf_model(variant: str, seed: int = 0):
  """A random tiny `transformers` causal LM of ``variant`` in float32 eval mode, eager attention.

  Every parameter, norms included, is redrawn so that a layout or offset error cannot hide behind
  ones/zeros initialisation.
  """
  cls, kw = VARIANTS[variant]
  cfg = cls(**{**TINY, **kw})
  cfg._attn_implementation = "eager"
  torch.manual_seed(seed)
  model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "norm" in name:
        base = 0.0 if "gemma" in cfg.model_type else 1.0
        p.copy_(base + 0.1 * torch.randn_like(p))
      else:
        p.copy_(0.1 * torch.randn_like(p))
  return model.float().eval()


def ragged_batch(vocab: int, lengths, pad_side: str, seed: int = 0):
  """int64 ids, attention mask and positions for rows of unequal ``lengths`` padded on ``pad_side``."""
  rng = np.random.default_rng(seed)
  t = max(lengths)
  ids = np.zeros((len(lengths), t), np.int64)
  mask = np.zeros((len(lengths), t), np.int64)
  for r, n in enumerate(lengths):
    row = rng.integers(3, vocab, size=n)
    sl = slice(t - n, t) if pad_side == "left" else slice(0, n)
    ids[r, sl], mask[r, sl] = row, 1
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
  return ids, mask, positions


def torch_logits(model, ids, mask, positions) -> np.ndarray:
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                position_ids=torch.from_numpy(positions))
  return out.logits.float().numpy()


def valid_logit_error(ref, model, lengths, pad_side: str) -> tuple[float, np.ndarray]:
  """(max abs logit difference of ``model`` from ``ref`` over real tokens, ``model``'s logits) on a
  ragged batch of random ids with rows of ``lengths`` padded on ``pad_side``."""
  ids, mask, positions = ragged_batch(ref.config.vocab_size, lengths, pad_side)
  want = torch_logits(ref, ids, mask, positions)
  got = np.asarray(model(ids.astype(np.int32), attention_mask=mask))
  valid = mask.astype(bool)
  return float(np.max(np.abs(got[valid] - want[valid]))), got
