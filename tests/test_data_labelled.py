"""Tests for KTO data: unpairing, labels, fixed KL partners, labelled batches and the unpaired stream."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require
from elasticity import data, paths
from elasticity.data import DataError
from elasticity.data.labelled import kl_partners
from elasticity.tokenizers import load_tokenizer
from elasticity.train.data import BatchStream, load_examples


@pytest.fixture(scope="module")
def tok512():
  return load_tokenizer(require(paths.shared_path("models", "stories260K", "tok512.bin")))


def _pairs(n: int, n_prompts: int | None = None) -> list[dict]:
  """``n`` pairs; with ``n_prompts``, pair i has prompt i mod n_prompts (pairs share prompts)."""
  stories = ["The cat sat", "A dog ran home", "Lily found a red ball", "Tom saw the sun",
             "The bird sang", "Ben ate a big cake", "Sue had a little boat", "The moon was bright"]
  k = n_prompts or n
  return [{"prompt": stories[i % k % len(stories)] + f" {i % k}.", "chosen": f" She was happy {i}.",
           "rejected": f" It was sad and bad {i} {i}.", "source_file": "pairs.jsonl",
           "source_index": 10 + i} for i in range(n)]


def _response_ids(ex) -> np.ndarray:
  return ex.input_ids[ex.prompt_len:]


# ---------------------------------------------------------------------------------- unpair ------


def test_unpair_gives_chosen_desirable_and_rejected_undesirable_with_provenance():
  pairs = _pairs(3) + [{"prompt": "P", "chosen": "c", "rejected": "r", "messages": [1]}]
  recs = data.unpair(pairs)
  assert recs.kind == "sft" and len(recs) == 8
  assert [r["label"] for r in recs] == [1, 0] * 4
  assert [r["pair_index"] for r in recs] == [0, 0, 1, 1, 2, 2, 3, 3]
  assert [r["response"] for r in recs[:2]] == [pairs[0]["chosen"], pairs[0]["rejected"]]
  assert all("chosen" not in r and "rejected" not in r for r in recs)
  assert recs[2]["source_file"] == "pairs.jsonl" and recs[3]["source_index"] == 11
  assert recs[7]["source_index"] == 3 and recs[7]["messages"] == [1]   # the pair's position
  with pytest.raises(DataError, match=r"pairs.jsonl, record 13, field 'rejected': missing field"):
    data.unpair([_pairs(3)[0], {k: v for k, v in _pairs(3)[2].items() if k != "rejected"}])


# ---------------------------------------------------------------------------------- labels ------


@pytest.mark.parametrize("value, want", [(True, 1), (False, 0), (1, 1), (0, 0), (np.int64(1), 1),
                                         (np.bool_(False), 0), ("true", 1), (" Yes ", 1),
                                         ("no", 0), ("FALSE", 0), ("1", 1), ("0", 0)])
def test_boolean_like_labels(value, want):
  assert data.read_label({"label": value}, 0) == want


def test_desirable_values_and_dotted_fields():
  assert data.read_label({"label": "pos"}, 0, desirable=("pos",)) == 1
  assert data.read_label({"label": "neg"}, 0, desirable=("pos",)) == 0
  assert data.read_label({"meta": {"ok": 4}}, 0, "meta.ok", desirable=(4, 5)) == 1


@pytest.mark.parametrize("record, message", [
    ({"prompt": "p"}, "field 'label': missing field"),
    ({"label": None}, "field 'label': missing value"),
    ({"label": 2}, "field 'label': expected a boolean-like label"),
    ({"label": "pos"}, "field 'label': expected a boolean-like label.*desirable="),
    ({"label": 0.5}, "field 'label': expected a boolean-like label"),
])
def test_bad_labels_name_file_record_and_field(record, message):
  rec = {**record, "source_file": "d/x.jsonl", "source_index": 6}
  with pytest.raises(DataError, match=r"d/x.jsonl, record 7, " + message):
    data.read_label(rec, 0)


def test_labels_are_checked_before_tokenizing(tok512):
  recs = [{"prompt": "a", "response": " b", "ok": "yes"}, {"prompt": "a", "response": " c"}]
  with pytest.raises(DataError, match=r"<memory>, record 2, field 'ok': missing field"):
    data.tokenize_labelled(recs, tok512, label_field="ok", max_length=2, policy="error")


# ------------------------------------------------------------------------------ KL partners ------


def test_kl_partner_has_another_prompt_and_borrows_its_response(tok512):
  recs = data.unpair(_pairs(8, n_prompts=3))     # 16 completions of 3 prompts
  ds = data.tokenize_labelled(recs, tok512, seed=3, max_length=64)
  assert isinstance(ds, data.LabelledDataset) and len(ds) == 16 and ds.report.n_kept == 16
  assert (ds.n_desirable, ds.n_undesirable) == (8, 8)
  assert [ex.label for ex in ds] == [1, 0] * 8
  by_index = {ex.index: ex for ex in ds}
  for ex in ds:
    partner = by_index[ex.partner]
    assert recs[ex.partner]["prompt"] != recs[ex.index]["prompt"]      # never the sibling, nor itself
    assert recs[ex.partner]["pair_index"] != recs[ex.index]["pair_index"]
    want = np.concatenate([ex.example.input_ids[:ex.example.prompt_len], _response_ids(partner.example)])
    np.testing.assert_array_equal(ex.kl.input_ids, want)
    assert ex.kl.loss_mask.tolist() == [0] * ex.example.prompt_len + [1] * (len(want) - ex.example.prompt_len)
    assert ex.kl.index == ex.index and ex.kl.response == partner.example.response
  again = data.tokenize_labelled(recs, tok512, seed=3, max_length=64)
  assert [ex.partner for ex in again] == [ex.partner for ex in ds]
  other = data.tokenize_labelled(recs, tok512, seed=4, max_length=64)
  assert [ex.partner for ex in other] != [ex.partner for ex in ds]


def test_kl_partners_walk_the_seeded_order():
  perm = data.order(6, 0).tolist()
  nxt = {perm[k]: perm[(k + 1) % 6] for k in range(6)}
  assert kl_partners(list("abcdef"), 0) == [nxt[i] for i in range(6)]
  assert kl_partners(["same"] * 6, 0) == [nxt[i] for i in range(6)]       # no other prompt: the next
  keys = ["x", "x", "x", "x", "x", "y"]
  got = kl_partners(keys, 0)
  assert all(keys[got[i]] == "y" for i in range(5)) and keys[got[5]] == "x"
  assert kl_partners(["only"], 0) == [0]


def test_kl_sequence_is_cut_on_the_right_and_never_scores_position_0(tok512):
  recs = [{"prompt": "Once upon a time there was a girl", "response": " who liked to play.",
           "label": True},
          {"prompt": "The", "response": " big dog ran to the park and played with a red ball all day.",
           "label": False}]
  ds = data.tokenize_labelled(recs, tok512, max_length=16)
  first = ds[0]
  assert first.partner == 1 and first.kl.length == 16 and first.kl.response_truncated
  np.testing.assert_array_equal(first.kl.input_ids[:first.example.prompt_len],
                                first.example.input_ids[:first.example.prompt_len])
  no_bos = data.tokenize_labelled([{"prompt": "", "response": "a b", "label": 1},
                                   {"prompt": "x", "response": " c", "label": 0}], tok512,
                                  add_bos=False)
  assert no_bos[0].kl.prompt_len == 0 and no_bos[0].kl.loss_mask[0] == 0


# ---------------------------------------------------------------------------------- batches ------


def test_labelled_batches_and_unpaired_stream_pad_the_last_batch(tok512):
  ds = data.tokenize_labelled(data.unpair(_pairs(5)), tok512, max_length=32)
  got = list(data.labelled_batches(ds, 4, 32, pad_id=-1))
  assert len(got) == 3
  last = got[-1]
  assert set(last) == {"example", "kl", "label", "row_valid"}
  assert last["example"]["input_ids"].shape == last["kl"]["input_ids"].shape == (4, 32)
  assert last["row_valid"].tolist() == [1, 1, 0, 0] and last["label"].tolist() == [1, 0, 0, 0]
  assert (last["kl"]["example_index"][2:] == -1).all() and (last["example"]["input_ids"][2:] == -1).all()
  assert last["kl"]["example_index"][1].max() == ds[9].index

  stream = BatchStream(ds, batch_size=4, max_length=32, kind="unpaired", seed=0)
  batches = stream.epoch_batches(0)
  fields = {"input_ids", "attention_mask", "loss_mask", "positions"}
  assert set(batches[0]) == fields | {f"kl_{k}" for k in fields} | {"label", "example_mask",
                                                                   "example_id"}
  b = batches[-1]
  assert b["label"].dtype == np.float32 and b["example_mask"].dtype == np.float32
  assert b["example_mask"].tolist() == [1, 1, 0, 0] and b["example_id"][2:].tolist() == [-1, -1]
  assert b["loss_mask"][2:].sum() == 0 and b["kl_loss_mask"][2:].sum() == 0
  seen = np.concatenate([x["example_id"] for x in batches])
  assert sorted(seen[seen >= 0].tolist()) == [ex.index for ex in ds]
  labels = {ex.index: ex.label for ex in ds}
  for x in batches:
    for i, lab in zip(x["example_id"], x["label"]):
      assert lab == (labels[int(i)] if i >= 0 else 0)
  with pytest.raises(ValueError, match="data.pack"):
    BatchStream(ds, batch_size=4, max_length=32, kind="unpaired", pack=True)


# ------------------------------------------------------------------------ launcher data config ------


def _cfg(**kw):
  cfg = dict(name="jsonl", split="", n=0, seed=1, template="plain", max_length=64,
             label_field="label", desirable=())
  cfg.update(kw)
  return cfg


def test_load_examples_unpairs_preference_files_and_reads_label_fields(tok512, tmp_path):
  pref = tmp_path / "pairs.jsonl"
  pref.write_text("".join(json.dumps({k: p[k] for k in ("prompt", "chosen", "rejected")}) + "\n"
                          for p in _pairs(6)))
  ds = load_examples(_cfg(load_kwargs=dict(path=str(pref), kind="preference"), n=4), tok512,
                     "unpaired")
  assert len(ds) == 8 and (ds.n_desirable, ds.n_undesirable) == (4, 4)    # n counts pairs

  lab = tmp_path / "labelled.jsonl"
  rows = [{"prompt": f"Story {i}.", "response": f" End {i}.", "stars": s} for i, s in
          enumerate(["good", "bad", "good", "meh"])]
  lab.write_text("".join(json.dumps(r) + "\n" for r in rows))
  kw = dict(path=str(lab), fields={"prompt": "prompt", "response": "response", "stars": "stars"})
  ds = load_examples(_cfg(load_kwargs=kw, label_field="stars", desirable=("good",)), tok512,
                     "unpaired")
  assert sorted((ex.index, ex.label) for ex in ds) == [(0, 1), (1, 0), (2, 1), (3, 0)]
  with pytest.raises(DataError, match=r"labelled.jsonl, record 1, field 'stars': expected a boolean"):
    load_examples(_cfg(load_kwargs=kw, label_field="stars"), tok512, "unpaired")
