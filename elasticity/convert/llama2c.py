"""llama2.c checkpoints (Karpathy's ``run.c`` "v0" format) → Flax Llama.

Layout: a header of 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len; a
positive vocab_size means the classifier is tied to the embedding), then float32 tensors in run.c's
order, each stored as a PyTorch ``Linear.weight`` ([out, in], row-major): token embedding, attention
RMSNorms, wq, wk, wv, wo, FFN RMSNorms, w1 (gate), w2 (down), w3 (up), final RMSNorm, two legacy RoPE
tables (skipped) and, if untied, the classifier.

llama2.c rotates *interleaved* pairs (q[2i], q[2i+1]); the ports use rotate-half. As in Meta's
``convert_llama_weights_to_hf``, wq and wk rows are permuted once so that both give the same model.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from elasticity.convert.params import model_from_tensors
from elasticity.models.config import ModelConfig, RopeConfig
from elasticity.models.transformer import CausalLM
from elasticity.tokenizers import load_tokenizer

HEADER_INTS = 7


def _permute_rotary(w: np.ndarray, heads: int) -> np.ndarray:
  """Interleaved-pair rows → rotate-half rows (per head), for wq / wk of shape [heads·hd, dim]."""
  out, dim = w.shape
  return w.reshape(heads, out // heads // 2, 2, dim).transpose(0, 2, 1, 3).reshape(out, dim)


def read_llama2c(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, np.ndarray]]:
  """Config and HF-named tensors of a llama2.c checkpoint."""
  path = Path(path)
  raw = path.read_bytes()
  if len(raw) < HEADER_INTS * 4:
    raise ValueError(f"{path}: too short for a llama2.c header ({len(raw)} bytes)")
  dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = np.frombuffer(raw, "<i4", HEADER_INTS).tolist()
  tied = vocab > 0
  vocab = abs(vocab)
  if min(dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len) <= 0 or dim % n_heads:
    raise ValueError(f"{path}: implausible llama2.c header {(dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len)}")
  hd = dim // n_heads
  data = np.frombuffer(raw, "<f4", offset=HEADER_INTS * 4)
  pos = 0

  def take(*shape):
    nonlocal pos
    n = int(np.prod(shape))
    if pos + n > data.size:
      raise ValueError(f"{path}: truncated: needs at least {(HEADER_INTS + pos + n) * 4} bytes, has {len(raw)}")
    out = data[pos:pos + n].reshape(shape)
    pos += n
    return out

  emb = take(vocab, dim)
  att_norm = take(n_layers, dim)
  wq = take(n_layers, n_heads * hd, dim)
  wk = take(n_layers, n_kv * hd, dim)
  wv = take(n_layers, n_kv * hd, dim)
  wo = take(n_layers, dim, n_heads * hd)
  ffn_norm = take(n_layers, dim)
  w1 = take(n_layers, hidden, dim)
  w2 = take(n_layers, dim, hidden)
  w3 = take(n_layers, hidden, dim)
  final_norm = take(dim)
  take(seq_len, hd // 2)   # freq_cis_real (unused)
  take(seq_len, hd // 2)   # freq_cis_imag (unused)
  tensors = {"model.embed_tokens.weight": emb, "model.norm.weight": final_norm}
  if not tied:
    tensors["lm_head.weight"] = take(vocab, dim)
  if pos != data.size:
    raise ValueError(f"{path}: {4 * (data.size - pos)} unexpected trailing bytes after the weights")
  for i in range(n_layers):
    p = f"model.layers.{i}."
    tensors.update({
        p + "input_layernorm.weight": att_norm[i],
        p + "self_attn.q_proj.weight": _permute_rotary(wq[i], n_heads),
        p + "self_attn.k_proj.weight": _permute_rotary(wk[i], n_kv),
        p + "self_attn.v_proj.weight": wv[i],
        p + "self_attn.o_proj.weight": wo[i],
        p + "post_attention_layernorm.weight": ffn_norm[i],
        p + "mlp.gate_proj.weight": w1[i],
        p + "mlp.down_proj.weight": w2[i],
        p + "mlp.up_proj.weight": w3[i],
    })
  cfg = ModelConfig(family="llama", vocab_size=vocab, hidden_size=dim, intermediate_size=hidden,
                    num_layers=n_layers, num_heads=n_heads, num_kv_heads=n_kv, head_dim=hd,
                    rms_norm_eps=1e-5, rope=RopeConfig(theta=10000.0), tie_embeddings=tied,
                    max_position_embeddings=seq_len, bos_token_id=1, eos_token_id=(2,), pad_token_id=0)
  return cfg, tensors


def load_llama2c(path: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
                 dtype=jnp.float32, param_dtype=None) -> CausalLM:
  """A Flax Llama from a llama2.c ``.bin``; ``tokenizer`` (its ``tokenizer.bin``) is checked for size."""
  cfg, tensors = read_llama2c(path)
  if tokenizer is not None:
    tok = load_tokenizer(tokenizer)
    if tok.vocab_size != cfg.vocab_size:
      raise ValueError(f"{tokenizer}: tokenizer has {tok.vocab_size} tokens but {path} has a "
                       f"vocabulary of {cfg.vocab_size}")
  return model_from_tensors(cfg, tensors.keys(), tensors.__getitem__, dtype=dtype,
                            param_dtype=param_dtype, source=str(path))
