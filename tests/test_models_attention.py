"""Causal block skipping in attention (rows of 256+ slots): same logits as `transformers` and as the
unblocked computation, with padding on either side, packed segments and sliding windows."""

from __future__ import annotations

import numpy as np
import pytest

from elasticity.convert import load_pretrained
from elasticity.models import layers

from hf_reference import tiny_hf_model, valid_logit_error
from tolerances import f32_tol, stack_depth


def test_causal_block_sizes():
  assert layers.causal_block(255) == 255                  # short rows: one block
  assert layers.causal_block(256) == 128
  assert layers.causal_block(512) == 128
  assert layers.causal_block(2048) == 256                 # at most 8 blocks


@pytest.mark.parametrize("variant", ["llama3", "gemma2"])
@pytest.mark.parametrize("pad_side", ["right", "left"])
def test_long_rows_match_transformers(variant, pad_side, tmp_path):
  ref = tiny_hf_model(variant)
  ref.save_pretrained(tmp_path)
  # 300 slots → query blocks [0,128), [128,256), [256,300); rows end inside different blocks.
  err, got = valid_logit_error(ref, load_pretrained(tmp_path), [300, 200, 130], pad_side)
  c = ref.config   # as test_models_parity, widest sum 300 keys: 6·√(300·29)·u·max|logit| ≈ 9e-5 (was 1e-4)
  tol = f32_tol(max(c.hidden_size, c.intermediate_size, 300), stack_depth(c.num_hidden_layers), margin=6)
  assert err < tol * np.abs(got).max(), f"{variant} {pad_side}: max abs logit error {err:.2e}"   # ≤ 3.1e-6


def test_blocked_equals_unblocked_on_packed_rows(tmp_path, monkeypatch):
  ref = tiny_hf_model("gemma3")            # sliding-window and global layers, GQA
  ref.save_pretrained(tmp_path)
  model = load_pretrained(tmp_path)
  rng = np.random.default_rng(1)
  ids = rng.integers(3, ref.config.vocab_size, (2, 384)).astype(np.int32)
  # Segments that straddle block boundaries; the tail of row 1 is padding (segment 0).
  seg = np.zeros((2, 384), np.int32)
  seg[0, :100], seg[0, 100:250], seg[0, 250:] = 1, 2, 3
  seg[1, :300] = 1
  blocked = np.asarray(model(ids, segment_ids=seg))
  monkeypatch.setattr(layers, "causal_block", lambda t: t)
  whole = np.asarray(model(ids, segment_ids=seg))
  real = seg > 0
  err = np.max(np.abs(blocked[real] - whole[real]))
  # Only attention's 2 reductions a layer over ≤ 384 keys may reorder: 6·√(384·2·4)·u·max|logit| ≈ 8e-5
  # (was 1e-5 absolute, tighter than the arithmetic allows; measured 0 here: same order on this host).
  tol = f32_tol(384, 2 * ref.config.num_hidden_layers, margin=6) * np.abs(whole[real]).max()
  assert err < tol, f"blocked vs unblocked attention: max abs logit difference {err:.2e}"
