"""Tests for prompt formats, SFT masks and truncation policies."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require
from elasticity import data, paths
from elasticity.data import DataError
from elasticity.tokenizers import load_tokenizer


@pytest.fixture(scope="module")
def tok512():
  return load_tokenizer(require(paths.shared_path("models", "stories260K", "tok512.bin")))


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
  return load_tokenizer(smollm2_gguf)


@pytest.fixture(scope="module")
def alpaca():
  require(paths.shared_path("data", "alpaca"))
  return data.load_dataset("alpaca", allow_empty=True)


def _scored(tok, ex) -> str:
  return tok.decode(ex.input_ids[ex.loss_mask == 1], skip_special=False)


def _unscored(tok, ex) -> str:
  return tok.decode(ex.input_ids[:ex.prompt_len], skip_special=False)


# ------------------------------------------------------------------------------- templates ------


def test_alpaca_template_text():
  with_input = data.format_example({"instruction": "Add.", "input": "2+2", "response": "4"},
                                   "alpaca")
  assert with_input.prompt == (
      "Below is an instruction that describes a task, paired with an input that provides further "
      "context. Write a response that appropriately completes the request.\n\n"
      "### Instruction:\nAdd.\n\n### Input:\n2+2\n\n### Response:")
  assert with_input.response == "4" and with_input.suffix == ""
  no_input = data.format_example({"prompt": "Say hi.", "response": "hi"}, "alpaca")
  assert no_input.prompt == (
      "Below is an instruction that describes a task. Write a response that appropriately "
      "completes the request.\n\n### Instruction:\nSay hi.\n\n### Response:")
  plain = data.format_example({"prompt": "Once", "response": " upon"}, "plain")
  assert (plain.prompt, plain.response) == ("Once", " upon")
  with pytest.raises(ValueError, match="template"):
    data.format_example({"prompt": "a", "response": "b"}, "vicuna")


def test_missing_response_named():
  with pytest.raises(DataError) as e:
    data.format_example({"prompt": "a", "source_file": "f.json", "source_index": 4}, "plain")
  assert str(e.value) == "f.json, record 5, field 'response': missing field"


def _texts(tok, ex) -> tuple[str, str]:
  """(prompt text, response text) of an example, decoded as one sequence and split at prompt_len.

  (A SentencePiece-style decode of the response ids alone would drop their leading space.)
  """
  full = tok.decode(ex.input_ids)
  prompt = tok.decode(ex.input_ids[:ex.prompt_len])
  assert full.startswith(prompt)
  return prompt, full[len(prompt):]


@pytest.mark.parametrize("template, merges", [("alpaca", []), ("plain", [17])])
def test_loss_only_on_response_tok512(tok512, alpaca, template, merges):
  toks = data.tokenize(alpaca[:40], tok512, template=template)
  assert len(toks) == 40
  # Plain concatenation glues record 17's prompt to its response ("...return factorial" + "def"):
  # tok512 merges "l" + "d" across the boundary; that token is reported and scored as response.
  assert toks.report.boundary_merges == merges
  for ex, rec in zip(toks, alpaca[:40]):
    f = data.format_example(rec, template)
    assert ex.input_ids[0] == tok512.bos_id and ex.input_ids[-1] == tok512.eos_id
    assert not ex.loss_mask[:ex.prompt_len].any() and ex.loss_mask[ex.prompt_len:].all()
    # The whole sequence is the joint encoding of the formatted text.
    assert ex.input_ids[1:-1].tolist() == tok512.encode(f.prompt + f.response)
    prompt, response = _texts(tok512, ex)
    if ex.index not in merges:
      assert (prompt, response) == (f.prompt, rec["response"])
    else:
      assert f.prompt.startswith(prompt) and response.endswith(rec["response"])
    assert ex.response == rec["response"]
    assert ex.response_bytes == len(rec["response"].encode("utf-8"))


def test_loss_only_on_response_chat(smol, alpaca):
  toks = data.tokenize(alpaca[:20], smol, template="chat")
  for ex, rec in zip(toks, alpaca[:20]):
    prompt = _unscored(smol, ex)
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith(rec["prompt"].strip() + "<|im_end|>\n<|im_start|>assistant\n")
    assert _scored(smol, ex) == rec["response"].strip() + "<|im_end|>\n"
    # The template writes its own first token; nothing is prepended (its BOS is <|im_start|>).
    f = data.format_example(rec, "chat", smol)
    assert ex.input_ids.tolist() == smol.encode(f.prompt + f.response + f.suffix)
    assert ex.response == rec["response"].strip()
  no_end = data.tokenize(alpaca[:5], smol, template="chat", add_eos=False)
  for ex, rec in zip(no_end, alpaca[:5]):
    assert _scored(smol, ex) == rec["response"].strip()


def test_chat_without_template_is_refused(tok512):
  with pytest.raises(ValueError, match="chat template"):
    data.tokenize([{"prompt": "a", "response": "b"}], tok512, template="chat")


def test_chat_uses_messages_for_dialogues(smol):
  require(paths.shared_path("data", "hh_rlhf"))
  hh = data.load_dataset("hh_rlhf", allow_empty=True)[:3]
  pairs = data.tokenize_preference(hh, smol, template="chat")
  text = _unscored(smol, pairs[0].chosen)
  assert text.count("<|im_start|>user\n") == 3 and text.count("<|im_start|>assistant\n") == 3
  assert "Human:" not in text


def test_text_records_score_everything_but_the_first_token(tok512):
  toks = data.tokenize([{"text": "Once upon a time."}], tok512, template="plain")
  ex = toks[0]
  assert ex.prompt_len == 1 and ex.input_ids[0] == tok512.bos_id
  assert ex.loss_mask.tolist() == [0] + [1] * (ex.length - 1)
  assert toks.report.first_token_unscored == []
  no_bos = data.tokenize([{"text": "Once upon a time."}], tok512, add_bos=False, add_eos=False)
  ex = no_bos[0]
  assert ex.loss_mask[0] == 0 and ex.loss_mask[1:].all()  # token 0 has no context
  assert ex.response_bytes == len("Once upon a time.")
  assert no_bos.report.first_token_unscored == [0]


def test_response_bytes_are_utf8(tok512):
  ex = data.tokenize([{"prompt": "Say:", "response": " café 日本"}], tok512)[0]
  assert ex.response_bytes == data.utf8_bytes(" café 日本") == 13
  assert _texts(tok512, ex) == ("Say:", " café 日本")


def test_empty_response_scores_only_eos(tok512):
  ex = data.tokenize([{"prompt": "Nothing to say.", "response": ""}], tok512)[0]
  assert ex.loss_mask.sum() == 1 and ex.input_ids[ex.loss_mask == 1].tolist() == [tok512.eos_id]
  assert ex.response_bytes == 0


def test_boundary_merges_are_reported():
  tok = load_tokenizer(require(paths.shared_path("tokenizers", "llama3",
                                                 "tokenizer_llama3.tiktoken")))
  rec = {"prompt": "What are the primary colors?", "response": "The three primary colors."}
  toks = data.tokenize([rec], tok, template="alpaca")
  assert toks.report.boundary_merges == [0]
  ex = toks[0]
  # Llama 3 encodes ":The" as one token: it is scored with the response, never dropped.
  assert tok.decode(ex.input_ids[ex.prompt_len:ex.prompt_len + 1]) == ":The"
  f = data.format_example(rec, "alpaca")
  assert tok.decode(ex.input_ids, skip_special=True) == f.prompt + f.response


# ------------------------------------------------------------------------------ truncation ------


def _rec(n_prompt_words: int, n_response_words: int) -> dict:
  return {"prompt": " ".join(["dog"] * n_prompt_words),
          "response": " " + " ".join(["cat"] * n_response_words)}


def test_truncate_prompt_left(tok512):
  recs = [_rec(3, 3), _rec(40, 3), _rec(2, 40)]
  toks = data.tokenize(recs, tok512, max_length=16, policy="truncate_prompt_left")
  full = data.tokenize(recs, tok512)
  assert [ex.length for ex in toks] == [full[0].length, 16, 16]
  short, long_prompt, long_resp = toks
  assert long_prompt.input_ids[0] == tok512.bos_id  # BOS kept
  # The response (and EOS) survive whole; the prompt lost its left part.
  assert (long_prompt.input_ids[long_prompt.prompt_len:].tolist()
          == full[1].input_ids[full[1].prompt_len:].tolist())
  assert (long_prompt.input_ids[1:long_prompt.prompt_len].tolist()
          == full[1].input_ids[full[1].prompt_len - (long_prompt.prompt_len - 1):
                               full[1].prompt_len].tolist())
  assert long_prompt.prompt_truncated and not long_prompt.response_truncated
  assert long_resp.prompt_len == 1 and long_resp.response_truncated
  assert toks.report.prompt_truncated == [1, 2] and toks.report.response_truncated == [2]
  assert toks.report.dropped == []
  assert "prompt truncated 2" in str(toks.report)


def test_truncate_response(tok512):
  recs = [_rec(3, 40), _rec(40, 3)]
  toks = data.tokenize(recs, tok512, max_length=16, policy="truncate_response")
  full = data.tokenize(recs, tok512)
  assert len(toks) == 1 and toks.report.dropped == [1]  # the prompt alone does not fit
  ex = toks[0]
  assert ex.length == 16 and ex.prompt_len == full[0].prompt_len and ex.response_truncated
  assert ex.input_ids.tolist() == full[0].input_ids[:16].tolist()
  assert toks.report.response_truncated == [0]


def test_drop_and_error(tok512):
  recs = [_rec(3, 3), _rec(40, 3)]
  dropped = data.tokenize(recs, tok512, max_length=16, policy="drop")
  assert [ex.index for ex in dropped] == [0] and dropped.report.dropped == [1]
  recs[1].update(source_file="q.jsonl", source_index=9)
  with pytest.raises(DataError, match=r"q\.jsonl, record 10, field 'response': \d+ tokens"):
    data.tokenize(recs, tok512, max_length=16, policy="error")
  with pytest.raises(ValueError, match="policy"):
    data.tokenize(recs, tok512, max_length=16, policy="truncate")


# ------------------------------------------------------------------------------ preference ------


def test_preference_pairs_share_prompt(tok512):
  require(paths.shared_path("data", "hh_rlhf"))
  hh = data.load_dataset("hh_rlhf", allow_empty=True)[:200]
  pairs = data.tokenize_preference(hh, tok512, template="plain", max_length=128)
  assert len(pairs) + len(pairs.report.dropped) == 200
  for p in pairs:
    rec = hh[p.index]
    c, r = p.chosen, p.rejected
    assert c.prompt_len == r.prompt_len
    assert np.array_equal(c.input_ids[:c.prompt_len], r.input_ids[:r.prompt_len])
    assert c.length <= 128 and r.length <= 128
    if not (c.prompt_truncated or c.response_truncated):
      assert _texts(tok512, c) == (rec["prompt"], rec["chosen"])
    if not (r.prompt_truncated or r.response_truncated):
      assert _texts(tok512, r) == (rec["prompt"], rec["rejected"])
    for ex in (c, r):
      assert not ex.loss_mask[:ex.prompt_len].any() and ex.loss_mask[ex.prompt_len:].all()
  assert pairs.report.prompt_truncated  # max_length=128 does cut some dialogues


def test_preference_drop_drops_the_pair(tok512):
  recs = [{"prompt": "Q", "chosen": " short", "rejected": " " + "very long " * 30},
          {"prompt": "Q", "chosen": " a", "rejected": " b"}]
  pairs = data.tokenize_preference(recs, tok512, max_length=16, policy="drop")
  assert [p.index for p in pairs] == [1] and pairs.report.dropped == [0]
