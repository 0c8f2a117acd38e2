"""Tests for packing, padding and batch iteration: layout, isolation, and nothing lost or doubled."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require
from elasticity import data, paths
from elasticity.data import TokenizedExample
from elasticity.tokenizers import load_tokenizer


T = 384  # row length for the Alpaca examples (tok512 needs ~240 tokens for a median example)


def _ex(index: int, n: int, n_prompt: int, base: int = 0) -> TokenizedExample:
  ids = np.arange(base, base + n, dtype=np.int32)
  mask = np.zeros(n, np.int32)
  mask[n_prompt:] = 1
  return TokenizedExample(ids, mask, index, n_prompt, "r", 1)


@pytest.fixture(scope="module")
def alpaca_tokens():
  tok = load_tokenizer(require(paths.shared_path("models", "stories260K", "tok512.bin")))
  require(paths.shared_path("data", "alpaca"))
  recs = data.load_dataset("alpaca", allow_empty=True)[:300]
  return data.tokenize(recs, tok, template="alpaca", max_length=T)


def _causal_segment_mask(seg: np.ndarray) -> np.ndarray:
  """[T, T] attention allowed: same non-zero segment, key not after query."""
  t = seg.shape[0]
  same = (seg[:, None] == seg[None, :]) & (seg[:, None] != 0)
  return same & np.tril(np.ones((t, t), bool))


def test_pack_layout():
  exs = [_ex(0, 3, 1, 100), _ex(1, 4, 2, 200), _ex(2, 5, 1, 300), _ex(3, 2, 1, 400)]
  out = data.pack(exs, 8, pad_id=-7)
  assert out["input_ids"].shape == (2, 8) and all(v.dtype == np.int32 for v in out.values())
  assert out["input_ids"].tolist() == [[100, 101, 102, 200, 201, 202, 203, -7],
                                       [300, 301, 302, 303, 304, 400, 401, -7]]
  assert out["segment_ids"].tolist() == [[1, 1, 1, 2, 2, 2, 2, 0], [1, 1, 1, 1, 1, 2, 2, 0]]
  assert out["positions"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], [0, 1, 2, 3, 4, 0, 1, 0]]
  assert out["loss_mask"].tolist() == [[0, 1, 1, 0, 0, 1, 1, 0], [0, 1, 1, 1, 1, 0, 1, 0]]
  assert out["example_index"].tolist() == [[0, 0, 0, 1, 1, 1, 1, -1], [2, 2, 2, 2, 2, 3, 3, -1]]
  assert out["attention_mask"].tolist() == (out["segment_ids"] != 0).astype(int).tolist()
  with pytest.raises(ValueError, match="more than the row length"):
    data.pack([_ex(0, 9, 1)], 8)


def test_packed_rows_isolate_examples(alpaca_tokens):
  out = data.pack(list(alpaca_tokens), 2 * T)
  by_index = {ex.index: ex for ex in alpaca_tokens}
  assert out["input_ids"].shape[0] < len(alpaca_tokens)  # really packed
  for r in range(out["input_ids"].shape[0]):
    seg, idx = out["segment_ids"][r], out["example_index"][r]
    k = seg.max()
    assert set(np.unique(seg)) <= set(range(k + 1))
    allowed = _causal_segment_mask(seg)
    for s in range(1, k + 1):
      where = np.flatnonzero(seg == s)
      assert np.all(np.diff(where) == 1)  # contiguous
      ex = by_index[int(idx[where[0]])]
      assert set(idx[where].tolist()) == {ex.index}
      # The segment holds exactly that example's tokens, positions restart at 0...
      assert np.array_equal(out["input_ids"][r, where], ex.input_ids)
      assert np.array_equal(out["positions"][r, where], np.arange(ex.length))
      # ... and no token of it may attend to a token of another example.
      assert not allowed[np.ix_(where, np.flatnonzero(seg != s))].any()
    assert not out["loss_mask"][r][seg == 0].any()


def test_loss_mask_sums_preserved(alpaca_tokens):
  n = max(ex.index for ex in alpaca_tokens) + 1
  expect = np.zeros(n, np.int64)
  for ex in alpaca_tokens:
    expect[ex.index] = ex.loss_mask.sum()

  def sums(out):
    m = out["example_index"] >= 0
    return np.bincount(out["example_index"][m], weights=out["loss_mask"][m], minlength=n)

  assert np.array_equal(sums(data.pack(list(alpaca_tokens), T)), expect)
  assert np.array_equal(sums(data.pad_batch(list(alpaca_tokens), T)), expect)


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_batch(side):
  exs = [_ex(5, 3, 1, 10), _ex(6, 5, 2, 20)]
  out = data.pad_batch(exs, 6, pad_side=side, pad_id=0)
  if side == "right":
    assert out["input_ids"].tolist() == [[10, 11, 12, 0, 0, 0], [20, 21, 22, 23, 24, 0]]
    assert out["positions"].tolist() == [[0, 1, 2, 0, 0, 0], [0, 1, 2, 3, 4, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]]
  else:
    assert out["input_ids"].tolist() == [[0, 0, 0, 10, 11, 12], [0, 20, 21, 22, 23, 24]]
    assert out["positions"].tolist() == [[0, 0, 0, 0, 1, 2], [0, 0, 1, 2, 3, 4]]
    assert out["attention_mask"].tolist() == [[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]]
    assert out["loss_mask"].tolist() == [[0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1]]
  assert out["example_index"][0][out["attention_mask"][0] == 1].tolist() == [5, 5, 5]
  assert data.pad_batch(exs)["input_ids"].shape == (2, 5)


def test_bucket_order():
  lengths = [3, 9, 1, 7, 5, 2, 8]
  assert data.bucket_order(lengths, 3) == [1, 0, 2, 3, 4, 5, 6]
  assert data.bucket_order(lengths, 100) == [1, 6, 3, 4, 0, 5, 2]
  assert data.bucket_order(lengths, 1) == list(range(7))


@pytest.mark.parametrize("pack", [False, True])
@pytest.mark.parametrize("bucket_window", [None, 16])
def test_batches_cover_every_example_once(alpaca_tokens, pack, bucket_window):
  bs = list(data.batches(alpaca_tokens, 7, T, pack=pack, bucket_window=bucket_window,
                         pad_side="left"))
  assert all(b["input_ids"].shape == (7, T) and b["row_valid"].shape == (7,) for b in bs)
  seen: list[int] = []
  for b in bs:
    for r in range(7):
      idx = b["example_index"][r]
      if not b["row_valid"][r]:
        assert (idx == -1).all() and not b["loss_mask"][r].any()
        continue
      seg = b["segment_ids"][r]
      for s in range(1, seg.max() + 1):
        seen.append(int(idx[seg == s][0]))
  assert sorted(seen) == sorted(ex.index for ex in alpaca_tokens)
  total = sum(int(b["loss_mask"].sum()) for b in bs)
  assert total == sum(int(ex.loss_mask.sum()) for ex in alpaca_tokens)
  if not pack:
    assert len(bs) == -(-len(alpaca_tokens) // 7)
    assert sum(int(b["row_valid"].sum()) for b in bs) == len(alpaca_tokens)
  # Same call, same batches.
  again = list(data.batches(alpaca_tokens, 7, T, pack=pack, bucket_window=bucket_window,
                            pad_side="left"))
  assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(bs, again))


def test_bucketing_groups_similar_lengths(alpaca_tokens):
  def spread(window):
    out = []
    for b in data.batches(alpaca_tokens, 8, T, bucket_window=window):
      lens = b["attention_mask"][b["row_valid"] == 1].sum(axis=1)
      out.append(int(lens.max() - lens.min()))
    return np.mean(out)
  assert spread(64) < spread(None) / 2


def test_batches_reject_long_examples():
  with pytest.raises(ValueError, match="more than max_length"):
    list(data.batches([_ex(0, 10, 1)], 2, 8))


def test_preference_batches_align_pairs():
  tok = load_tokenizer(require(paths.shared_path("models", "stories260K", "tok512.bin")))
  require(paths.shared_path("data", "hh_rlhf"))
  hh = data.load_dataset("hh_rlhf", allow_empty=True)[:10]
  pairs = data.tokenize_preference(hh, tok, max_length=256)
  bs = list(data.preference_batches(pairs, 4, 256))
  assert len(bs) == 3 and bs[-1]["row_valid"].tolist() == [1, 1, 0, 0]
  for b in bs:
    c, r = b["chosen"], b["rejected"]
    assert np.array_equal(c["example_index"][:, 0], r["example_index"][:, 0])
    for row in range(4):
      if b["row_valid"][row]:
        p = pairs[int(c["example_index"][row, 0])]
        n = p.chosen.prompt_len
        assert np.array_equal(c["input_ids"][row, :n], r["input_ids"][row, :n])
