"""Tests for elasticity.tokenizers: each format against an independent reference implementation."""

from __future__ import annotations

import json
import struct

import pytest

from conftest import require
from elasticity import tokenizers as tk

SENTENCES = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "café au lait, naïve résumé",
    "日本",
    "東京 is in 日本.",
    "🦙 llamas 😀😀 and emoji",
    "  two  leading spaces and   three",
    "line\nbreak\ttab",
    "Straße — “quotes” … ½",
    "x" * 40,
    " a",
    "",
]

STORIES = [
    "Once upon a time, there was a little girl named Lily.",
    "She loved to play outside in the park with her friends.",
    "One day, a big dog came and said \"Hello!\" to the cat.",
    "Tom was sad. He did not want to go home.",
]


@pytest.fixture(scope="module")
def llama2_sp(shared_dir_module):
  import sentencepiece as spm
  return spm.SentencePieceProcessor(
      model_file=str(require(shared_dir_module / "tokenizers/llama2/tokenizer.model")))


@pytest.fixture(scope="module")
def shared_dir_module():
  from elasticity import paths
  return require(paths.shared_dir())


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
  return tk.load_tokenizer(smollm2_gguf)


# ---------------------------------------------------------------------------------- llama2.c ----


def test_llama2c_matches_sentencepiece(shared_dir_module, llama2_sp):
  tok = tk.load_tokenizer(require(shared_dir_module / "tokenizers/llama2/tokenizer.bin"))
  assert isinstance(tok, tk.Llama2cTokenizer)
  assert tok.vocab_size == 32000
  for s in SENTENCES:
    assert tok.encode(s) == llama2_sp.encode(s), s
    assert tok.decode(tok.encode(s)) == s
  # Byte fallback really is exercised: the llama is not in the vocabulary.
  assert [243, 162, 169, 156] == tok.encode("🦙")[1:5]
  assert tok.encode("Hi", add_bos=True)[0] == 1
  assert 1 not in tok.encode("Hi")


def test_llama2c_matches_sentencepiece_on_alpaca(shared_dir_module, llama2_sp):
  tok = tk.Llama2cTokenizer(require(shared_dir_module / "tokenizers/llama2/tokenizer.bin"))
  recs = json.loads(require(shared_dir_module / "data/alpaca/alpaca_data_first1805.json")
                    .read_text(encoding="utf-8"))
  for r in recs[:200]:
    for s in (r["instruction"], r["input"], r["output"]):
      assert tok.encode(s) == llama2_sp.encode(s), s


def test_llama2c_tok512_roundtrip(shared_dir_module):
  tok = tk.load_tokenizer(require(shared_dir_module / "models/stories260K/tok512.bin"))
  assert tok.vocab_size == 512
  for s in STORIES + ["café 日本 🦙"]:
    ids = tok.encode(s)
    assert all(0 <= i < 512 for i in ids)
    assert tok.decode(ids) == s
  # Merging happened (far fewer tokens than bytes) and special tokens decode only on request.
  ids = tok.encode(STORIES[0], add_bos=True)
  assert len(ids) < len(STORIES[0]) / 2
  assert tok.decode(ids + [2]) == STORIES[0]
  assert tok.decode(ids + [2], skip_special=False).startswith("\n<s>\n")


def test_llama2c_tie_breaks_leftmost(tmp_path):
  # Vocabulary where "ab" and "bc" tie in score: llama2.c merges the leftmost pair first.
  pieces = [b"<unk>", b"\n<s>\n", b"\n</s>\n"] + [b"<0x%02X>" % i for i in range(256)]
  pieces += [b" ", b"a", b"b", b"c", b"ab", b"bc", b" ab"]
  scores = [0.0] * (len(pieces) - 3) + [-1.0, -1.0, -5.0]
  path = tmp_path / "tok.bin"
  with open(path, "wb") as f:
    f.write(struct.pack("<i", 3))
    for p, s in zip(pieces, scores):
      f.write(struct.pack("<fi", s, len(p)) + p)
  tok = tk.Llama2cTokenizer(path)
  c, space_ab = pieces.index(b"c"), pieces.index(b" ab")
  assert tok.encode("abc") == [space_ab, c]
  assert tok.decode(tok.encode("abc")) == "abc"


def test_llama2c_rejects_truncated_file(tmp_path):
  path = tmp_path / "bad.bin"
  path.write_bytes(struct.pack("<i", 3) + struct.pack("<fi", 0.0, 10) + b"abc")
  with pytest.raises(ValueError, match="token 0"):
    tk.Llama2cTokenizer(path)


# ------------------------------------------------------------------------------ SentencePiece ----


def test_sentencepiece_model(shared_dir_module, llama2_sp):
  tok = tk.load_tokenizer(require(shared_dir_module / "tokenizers/llama2/tokenizer.model"))
  assert isinstance(tok, tk.SentencePieceTokenizer)
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (32000, 1, 2, 2)
  assert tok.add_bos_token
  for s in SENTENCES:
    assert tok.encode(s) == llama2_sp.encode(s)
    assert tok.decode(tok.encode(s)) == s
  ids = tok.encode("Hi there", add_bos=True) + [2]
  assert ids[0] == 1 and 1 not in tok.encode("Hi there")
  assert tok.decode(ids) == "Hi there"
  assert tok.decode(ids, skip_special=False) == "<s>Hi there</s>"
  assert tok.apply_chat_template([{"role": "user", "content": "x"}],
                                 add_generation_prompt=True) is None


# ----------------------------------------------------------------------------------- tiktoken ----


def test_llama3_tiktoken(shared_dir_module):
  path = shared_dir_module / "tokenizers/llama3/tokenizer_llama3.tiktoken"
  tok = tk.load_tokenizer(require(path))
  assert isinstance(tok, tk.TiktokenTokenizer)
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (128256, 128000, 128001, 128001)
  # Published Llama 3 ids: "Hello world!" -> <|begin_of_text|> Hello ␣world !
  assert tok.encode("Hello world!", add_bos=True) == [128000, 9906, 1917, 0]
  assert tok.encode("Hello world!") == [9906, 1917, 0]
  assert tok.encode("<|eot_id|><|reserved_special_token_250|>") == [128009, 128255]
  for s in SENTENCES:
    assert tok.decode(tok.encode(s)) == s
  assert tok.decode([128000, 9906]) == "Hello"
  assert tok.decode([128000, 9906], skip_special=False) == "<|begin_of_text|>Hello"
  # Numbers split in groups of at most three digits (Llama 3's pre-tokenizer, not GPT-2's).
  assert [tok.decode([i]) for i in tok.encode("1234567")] == ["123", "456", "7"]


def test_qwen_tiktoken(shared_dir_module):
  tok = tk.load_tokenizer(require(shared_dir_module / "tokenizers/qwen/qwen.tiktoken"))
  assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (151851, None, 151643)
  assert not tok.add_bos_token
  assert tok.encode("Hello world") == [9707, 1879]
  assert tok.encode("<|im_start|>user<|im_end|>")[0::2] == [151644, 151645]
  assert [tok.decode([i]) for i in tok.encode("123")] == ["1", "2", "3"]
  for s in SENTENCES:
    assert tok.decode(tok.encode(s)) == s


def test_gpt2_matches_transformers(shared_dir_module):
  from transformers import GPT2Tokenizer
  folder = require(shared_dir_module / "tokenizers/gpt2")
  tok = tk.load_tokenizer(folder / "encoder.json")
  vocab = json.loads((folder / "encoder.json").read_text(encoding="utf-8"))
  merges = [tuple(line.split()) for line in
            (folder / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:] if line.strip()]
  ref = GPT2Tokenizer(vocab=vocab, merges=merges)
  assert (tok.vocab_size, tok.eos_id) == (50257, 50256)
  assert tok.encode("Hello world") == [15496, 995]
  for s in SENTENCES + STORIES:
    assert tok.encode(s) == ref.encode(s), s
    assert tok.decode(tok.encode(s)) == s


def test_tiktoken_needs_flavor_for_unknown_rank_count(tmp_path):
  path = tmp_path / "x.tiktoken"
  path.write_text("YQ== 0\nYg== 1\n")
  with pytest.raises(ValueError, match="flavor"):
    tk.load_tokenizer(path)


# -------------------------------------------------------------------------------- HF and GGUF ----


def test_gguf_tokenizer_and_chat_template(smollm2):
  tok = smollm2
  assert isinstance(tok, tk.HFTokenizer)
  assert tok.vocab_size == 49152
  assert tok.has_chat_template
  assert not tok.add_bos_token
  ids = tok.encode("Hello world")
  assert ids and tok.bos_id not in ids
  assert tok.encode("Hello world", add_bos=True) == [tok.bos_id] + ids
  assert tok.decode(ids) == "Hello world"
  msgs = [{"role": "user", "content": "Hi"}]
  prompt = tok.apply_chat_template(msgs, add_generation_prompt=True)
  full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "Yo"}],
                                 add_generation_prompt=False)
  assert prompt.endswith("<|im_start|>assistant\n")
  assert full.startswith(prompt) and "Yo<|im_end|>" in full
  # Special-token text in the input becomes the special token.
  assert len(tok.encode("<|im_end|>")) == 1


def test_hf_folder_roundtrip(smollm2, tmp_path):
  smollm2.save(tmp_path)                  # read from the GGUF file, written as an HF folder
  tok = tk.load_tokenizer(tmp_path)
  assert isinstance(tok, tk.HFTokenizer)
  for s in SENTENCES:
    assert tok.encode(s) == smollm2.encode(s)
  assert tok.has_chat_template


@pytest.mark.parametrize("source, kind", [
    ("tokenizers/llama2/tokenizer.model", tk.SentencePieceTokenizer),
    ("tokenizers/llama2/tokenizer.bin", tk.Llama2cTokenizer),
    ("models/stories260K/tok512.bin", tk.Llama2cTokenizer),
    ("tokenizers/llama3/tokenizer_llama3.tiktoken", tk.TiktokenTokenizer),
    ("tokenizers/qwen/qwen.tiktoken", tk.TiktokenTokenizer),
    ("tokenizers/gpt2", tk.TiktokenTokenizer),
])
def test_save_then_load_gives_the_same_tokenizer(shared_dir_module, source, kind, tmp_path):
  """A tokenizer saved into a folder (as model exports do) loads back from that folder alone."""
  orig = tk.load_tokenizer(require(shared_dir_module / source))
  (tmp_path / "config.json").write_text("{}")       # an export folder also holds the model
  orig.save(tmp_path)
  tok = tk.load_tokenizer(tmp_path)
  assert type(tok) is kind
  for s in SENTENCES + ["café 日本 🙂 <|endoftext|>"]:
    assert tok.encode(s, add_bos=True) == orig.encode(s, add_bos=True)
  assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos_token) == (
      orig.vocab_size, orig.bos_id, orig.eos_id, orig.pad_id, orig.add_bos_token)


def test_load_tokenizer_rejects_unknown(tmp_path):
  with pytest.raises(FileNotFoundError):
    tk.load_tokenizer(tmp_path / "missing.bin")
  (tmp_path / "x.txt").write_text("hi")
  with pytest.raises(ValueError, match="unrecognised"):
    tk.load_tokenizer(tmp_path / "x.txt")


def test_protocol_is_satisfied(shared_dir_module):
  tok = tk.load_tokenizer(require(shared_dir_module / "models/stories260K/tok512.bin"))
  assert isinstance(tok, tk.Tokenizer)


# ------------------------------------------------------------- transformers tokenizers accepted ----

_RECORDS = [{"prompt": "Give three tips for staying healthy.", "response": "Eat well, sleep, move."},
            {"prompt": "What is 2 + 2?", "response": "It is 4."},
            {"prompt": "Name a colour.", "response": "Blue — like the sky."}]


def test_as_tokenizer_wraps_transformers_and_passes_ours_through(smollm2):
  assert tk.as_tokenizer(smollm2) is smollm2
  plain = smollm2.hf                       # what AutoTokenizer.from_pretrained(gguf_file=...) returns
  assert not isinstance(plain, tk.Tokenizer)
  wrapped = tk.as_tokenizer(plain)
  assert isinstance(wrapped, tk.HFTokenizer) and wrapped.hf is plain
  assert (wrapped.pad_id, wrapped.eos_id, wrapped.vocab_size) == (smollm2.pad_id, smollm2.eos_id, 49152)
  for bad, hint in ((object(), "got object"), ("tok512.bin", "load_tokenizer"), (None, "got NoneType")):
    with pytest.raises(TypeError, match="elasticity.tokenizers.Tokenizer.*transformers "
                                        "PreTrainedTokenizerBase") as e:
      tk.as_tokenizer(bad)
    assert hint in str(e.value)


def _measure_both(model, tok, template):
  from elasticity import data
  from elasticity.compression import measure
  plain = tok.hf
  rows = lambda t: [(ex.input_ids.tolist(), ex.loss_mask.tolist())
                    for ex in data.tokenize(_RECORDS, t, template=template)]
  assert rows(plain) == rows(tok)
  ours = measure(model, tok, _RECORDS, max_length=64, batch_size=4, template=template, buckets=(64,))
  theirs = measure(model, plain, _RECORDS, max_length=64, batch_size=4, template=template,
                   buckets=(64,))
  return ours, theirs


@pytest.mark.parametrize("template", ["plain", "chat"])
def test_measure_with_a_transformers_tokenizer_gives_the_same_numbers(smollm2, template):
  """A random tiny model over SmolLM2's vocabulary: the numbers depend only on the tokenization."""
  from elasticity.models import ModelConfig, create_model
  cfg = ModelConfig(family="llama", vocab_size=49152, hidden_size=32, intermediate_size=64,
                    num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16)
  ours, theirs = _measure_both(create_model(cfg, seed=3), smollm2, template)
  assert ours == theirs and ours.tokens > 0 and ours.examples == len(_RECORDS)


@pytest.mark.slow
def test_measure_on_smollm2_with_a_transformers_tokenizer(smollm2, smollm2_gguf):
  from elasticity.convert import load_pretrained
  ours, theirs = _measure_both(load_pretrained(smollm2_gguf), smollm2, "chat")
  assert ours == theirs and ours.tokens > 0 and 0 < ours.bits_per_byte < 8
