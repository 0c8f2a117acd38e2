"""Published ``config.json`` values of the checkpoints the paper uses (and a few newer relatives).

These let configs, tests and sharding plans reason about full-size models without downloading
anything: ``preset_config("llama2-7b")`` is the `ModelConfig` that loading the real checkpoint gives.
Only architecture fields are listed; anything absent takes the family's transformers default.
"""

from __future__ import annotations

from typing import Any

from elasticity.models.config import ModelConfig
from elasticity.models.registry import config_from_hf

_LLAMA2 = dict(model_type="llama", vocab_size=32000, rms_norm_eps=1e-5, max_position_embeddings=4096,
               rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
_QWEN15 = dict(model_type="qwen2", vocab_size=151936, rms_norm_eps=1e-6, max_position_embeddings=32768,
               bos_token_id=151643, eos_token_id=151643)
_GEMMA = dict(model_type="gemma", vocab_size=256000, head_dim=256, rms_norm_eps=1e-6,
              max_position_embeddings=8192, rope_theta=10000.0, tie_word_embeddings=True,
              bos_token_id=2, eos_token_id=1, pad_token_id=0, hidden_activation="gelu_pytorch_tanh")

HF_CONFIGS: dict[str, dict[str, Any]] = {
    "llama2-7b": {**_LLAMA2, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 32},
    "llama2-13b": {**_LLAMA2, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
                   "num_attention_heads": 40, "num_key_value_heads": 40},
    "llama3-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      rms_norm_eps=1e-5, max_position_embeddings=8192, rope_theta=500000.0,
                      tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001),
    "llama3.1-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                        rms_norm_eps=1e-5, max_position_embeddings=131072, rope_theta=500000.0,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                        tie_word_embeddings=False, bos_token_id=128000, eos_token_id=[128001, 128008, 128009]),
    "tinyllama-1.1b": dict(model_type="llama", vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                           num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                           rms_norm_eps=1e-5, max_position_embeddings=2048, rope_theta=10000.0,
                           tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         rms_norm_eps=1e-5, max_position_embeddings=8192, rope_theta=100000.0,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2),
    "qwen1.5-0.5b": {**_QWEN15, "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 24,
                     "num_attention_heads": 16, "num_key_value_heads": 16, "rope_theta": 1000000.0,
                     "tie_word_embeddings": True},
    "qwen1.5-4b": {**_QWEN15, "hidden_size": 2560, "intermediate_size": 6912, "num_hidden_layers": 40,
                   "num_attention_heads": 20, "num_key_value_heads": 20, "rope_theta": 5000000.0,
                   "tie_word_embeddings": False},
    "qwen1.5-7b": {**_QWEN15, "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
                   "num_attention_heads": 32, "num_key_value_heads": 32, "rope_theta": 1000000.0,
                   "tie_word_embeddings": False},
    "qwen2.5-0.5b": {**_QWEN15, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
                     "num_attention_heads": 14, "num_key_value_heads": 2, "rope_theta": 1000000.0,
                     "tie_word_embeddings": True},
    "gemma-2b": {**_GEMMA, "hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
                 "num_attention_heads": 8, "num_key_value_heads": 1},
    "gemma-7b": {**_GEMMA, "hidden_size": 3072, "intermediate_size": 24576, "num_hidden_layers": 28,
                 "num_attention_heads": 16, "num_key_value_heads": 16},
    "gemma2-2b": {**_GEMMA, "model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216,
                  "num_hidden_layers": 26, "num_attention_heads": 8, "num_key_value_heads": 4,
                  "query_pre_attn_scalar": 256, "sliding_window": 4096,
                  "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0},
    "gemma3-1b": dict(model_type="gemma3_text", vocab_size=262144, hidden_size=1152, intermediate_size=6912,
                      num_hidden_layers=26, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                      rms_norm_eps=1e-6, max_position_embeddings=32768, rope_theta=1000000.0,
                      rope_local_base_freq=10000.0, query_pre_attn_scalar=256, sliding_window=512,
                      sliding_window_pattern=6, tie_word_embeddings=True, bos_token_id=2, eos_token_id=1,
                      pad_token_id=0, hidden_activation="gelu_pytorch_tanh"),
}


def preset_names() -> tuple[str, ...]:
  return tuple(HF_CONFIGS)


def preset_config(name: str) -> ModelConfig:
  """The `ModelConfig` of a published checkpoint, by preset name (see `preset_names()`)."""
  if name not in HF_CONFIGS:
    raise ValueError(f"unknown model preset {name!r}; known: {', '.join(HF_CONFIGS)}")
  return config_from_hf(dict(HF_CONFIGS[name]))
