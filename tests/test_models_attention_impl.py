"""The attention-implementation switch: "cudnn" runs `jax.nn.dot_product_attention` (checked on CPU
through its ``implementation="xla"`` twin), "splash" the Pallas kernel (in interpret mode), both
against today's XLA path, with causal, padding, packed-segment and sliding-window masks."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from elasticity.models import attention, create_model
from elasticity.models.config import FULL, SLIDING, ModelConfig
from elasticity.models.generate import generate
from elasticity.models.scan import stack_layers
from tolerances import f32_tol, stack_depth

# Gemma 3 style: q/k norms, GQA, a sliding-window layer with its own RoPE base, no soft-capping.
CFG = ModelConfig(family="gemma3", vocab_size=53, hidden_size=32, intermediate_size=40, num_layers=3,
                  num_heads=4, num_kv_heads=2, head_dim=8, norm_plus_one=True, embed_scale=True,
                  activation="gelu_tanh", sandwich_norms=True, qk_norm=True, sliding_window=5,
                  layer_types=(SLIDING, FULL, SLIDING), query_pre_attn_scalar=8.0)


def inputs(t, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, CFG.vocab_size, (3, t)).astype(np.int32)
  right = np.arange(t)[None, :] < np.array([[t], [t - 7], [t // 2]])          # right padding
  left = right[:, ::-1].copy()                                                 # left padding
  seg = np.zeros((3, t), np.int32)
  seg[0, :t // 3], seg[0, t // 3:] = 1, 2
  seg[1, :t - 4] = 1
  seg[2, :4], seg[2, 4:t - 1] = 1, 2
  return ids, right, left, seg


def forward(model, impl):
  graphdef, state = nnx.split(model.set_attention_impl(impl))
  return jax.jit(lambda ids, mask, seg: nnx.merge(graphdef, state)(ids, attention_mask=mask,
                                                                    segment_ids=seg))


def compare(model, impl, t):
  ids, right, left, seg = inputs(t)
  want_fn, got_fn = forward(model, "xla"), forward(model, impl)
  for what, mask, segs, real in (("causal", None, None, np.ones_like(right)),
                                 ("right padding", right, None, right),
                                 ("left padding", left, None, left),
                                 ("segments", None, seg, seg > 0)):
    want, got = np.asarray(want_fn(ids, mask, segs)), np.asarray(got_fn(ids, mask, segs))
    err = np.max(np.abs(got[real] - want[real]))
    # Another attention core reorders the key and width reductions of every layer: elementwise max
    # (margin 6) of 6·√(max(t, width)·depth)·u relative, times the logits' scale (was 2e-5 absolute).
    tol = f32_tol(max(t, CFG.intermediate_size), stack_depth(CFG.num_layers), 6) * max(
        1.0, float(np.max(np.abs(want[real]))))
    assert err < tol, f"{impl} {what}: max abs logit difference {err:.2e} (tolerance {tol:.2e})"
  model.set_attention_impl("xla")


@pytest.mark.parametrize("scanned", [False, True], ids=["unrolled", "scanned"])
def test_cudnn_path_matches_xla(monkeypatch, scanned):
  monkeypatch.setitem(attention._DPA_IMPLEMENTATION, "cudnn", "xla")
  model = create_model(CFG, seed=2)
  compare(stack_layers(model) if scanned else model, "cudnn", 24)


def test_splash_interpret_matches_xla(monkeypatch):
  monkeypatch.setattr(attention, "SPLASH_INTERPRET", True)
  cfg = CFG.replace(num_layers=2, layer_types=(SLIDING, FULL), attn_logit_softcap=3.0)
  model = stack_layers(create_model(cfg, seed=3))
  compare(model, "splash", 128)


def test_decoding_falls_back_to_xla(monkeypatch):
  monkeypatch.setitem(attention._DPA_IMPLEMENTATION, "cudnn", "xla")
  model = create_model(CFG, seed=4)
  prompts = [[5, 9, 11, 3], [4, 6]]
  want = generate(model, prompts, max_new_tokens=4).tokens
  assert generate(model.set_attention_impl("cudnn"), prompts, max_new_tokens=4).tokens == want


def test_unsupported_combinations_say_what_and_which():
  ids = np.ones((1, 16), np.int32)
  capped = create_model(CFG.replace(attn_logit_softcap=5.0), seed=0).set_attention_impl("cudnn")
  with pytest.raises(ValueError, match="cudnn.*soft-capping"):
    capped(ids)
  with pytest.raises(ValueError, match="splash.*multiple of 128"):
    create_model(CFG, seed=0).set_attention_impl("splash")(np.ones((1, 100), np.int32))
  with pytest.raises(ValueError, match="attention_impl 'flash' is not one of"):
    create_model(CFG, seed=0).set_attention_impl("flash")
  assert create_model(CFG, seed=0, attention_impl="cudnn").attention_impl == "cudnn"
