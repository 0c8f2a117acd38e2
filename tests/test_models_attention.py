"""Causal block skipping in attention (rows of 256+ slots): same logits as `transformers` and as the
unblocked computation, with padding on either side, packed segments and sliding windows."""

from __future__ import annotations

import numpy as np
import pytest

from elasticity.convert import load_pretrained
from elasticity.models import layers

from hf_reference import tiny_hf_model, valid_logit_error


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
  err, _ = valid_logit_error(ref, load_pretrained(tmp_path), [300, 200, 130], pad_side)
  assert err < 1e-4, f"{variant} {pad_side}: max abs logit error {err:.2e}"


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
  assert err < 1e-5, f"blocked vs unblocked attention: max abs logit difference {err:.2e}"
