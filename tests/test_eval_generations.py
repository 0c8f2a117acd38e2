"""Continuations of prompts with the real stories260K model, and the generations.jsonl round trip."""

from __future__ import annotations

import json

import pytest

from elasticity.eval import generations as gen
from elasticity.eval.kl import kl_on_generations
from elasticity.models import generate as generate_module
from elasticity.convert import load_pretrained
from elasticity.models.generate import generate
from elasticity.tokenizers import load_tokenizer

from conftest import require

PROMPTS = ["Once upon a time", "The dog", "Lily was sad", "Tom saw a big", "One day"]
N = 10


@pytest.fixture(scope="module")
def stories():
  from elasticity import paths
  root = require(paths.shared_dir() / "models" / "stories260K")
  tok_path = require(root / "tok512.bin")
  return load_pretrained(require(root / "stories260K.bin"), tokenizer=tok_path), load_tokenizer(tok_path)


def sample(model, tok, **kw):
  args = dict(max_new_tokens=N, temperature=1.0, top_p=1.0, seed=3, batch_size=2)
  return gen.continue_prompts(model, tok, PROMPTS, **{**args, **kw})


def test_rows_decode_their_tokens_and_follow_the_prompt_order(stories):
  model, tok = stories
  rows = sample(model, tok)
  assert [r["index"] for r in rows] == list(range(len(PROMPTS)))
  assert [r["prompt"] for r in rows] == PROMPTS
  for r in rows:
    assert r["prompt_ids"] == tok.encode(r["prompt"], add_bos=True) and r["prompt_ids"][0] == tok.bos_id
    ids = r["completion_ids"]
    assert 1 <= len(ids) <= N
    assert r["stopped"] == (ids[-1] == tok.eos_id) and tok.eos_id not in ids[:-1]
    assert r["completion"] == tok.decode(ids[:-1] if r["stopped"] else ids)
  assert gen.encode_prompts(tok, PROMPTS, add_bos=False) == [tok.encode(p) for p in PROMPTS]


def test_seeded_per_batch_and_one_compilation_for_all_batches(stories):
  model, tok = stories
  a = sample(model, tok)
  assert a == sample(model, tok)                                  # same seed: same samples
  assert [r["completion_ids"] for r in a] != [r["completion_ids"] for r in sample(model, tok, seed=4)]
  # Batch j samples with batch_seed(seed, j): the last (filled-up) batch is the prompt continued
  # alone with that seed in a batch of two.
  last = generate(model, [a[4]["prompt_ids"]] * 2, max_new_tokens=N, temperature=1.0,
                  stop_tokens=[tok.eos_id], pad_id=tok.pad_id, seed=gen.batch_seed(3, 2))
  assert last.tokens[0] == a[4]["completion_ids"]
  assert len({gen.batch_seed(3, j) for j in range(100)}) == 100
  # Every batch has batch_size rows (the last one filled up) and the prompts (at most 8 tokens) pad
  # to one length: one compilation served all batches.
  assert max(len(r["prompt_ids"]) for r in a) <= 8
  sampling = generate_module.SamplingConfig(N, 1.0, 1.0, (tok.eos_id,))
  from flax import nnx
  fn = generate_module._compiled(nnx.split(model)[0], sampling, tok.pad_id)
  assert fn._cache_size() == 1


def test_greedy_does_not_depend_on_batching_or_seed(stories):
  model, tok = stories
  greedy = sample(model, tok, temperature=0.0, batch_size=2, seed=0)
  assert sample(model, tok, temperature=0.0, batch_size=len(PROMPTS), seed=9) == greedy
  assert len({tuple(r["completion_ids"]) for r in greedy}) > 1
  # A nucleus this small keeps only the most likely token: top_p reaches the sampler.
  assert sample(model, tok, top_p=1e-6, batch_size=len(PROMPTS)) == greedy
  # The rows feed the KL evaluator directly: KL of the model to itself is 0 on its continuations.
  rep = kl_on_generations(model, model, greedy)
  assert rep.tokens == sum(len(r["completion_ids"]) for r in greedy) and abs(rep.sum_kl) < 1e-6


def test_save_load_round_trip_and_bad_files(tmp_path):
  rows = [{"index": 0, "prompt": "Hi", "prompt_ids": [1, 7], "completion": " there",
           "completion_ids": [9, 2], "stopped": True},
          {"index": 1, "prompt": "Yo", "prompt_ids": [1, 8], "completion": "é", "completion_ids": [5],
           "stopped": False}]
  meta = {"model": "stories260K", "seed": 3, "max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0}
  path = tmp_path / "cell" / "generations.jsonl"
  gen.save(path, rows, meta)
  lines = path.read_text(encoding="utf-8").splitlines()
  assert len(lines) == 3 and json.loads(lines[0])["meta"]["count"] == 2
  got_rows, got_meta = gen.load(path)
  assert got_rows == rows
  assert got_meta == {**meta, "format": gen.FORMAT, "count": 2}

  before = path.read_bytes()
  with pytest.raises(ValueError, match=r"row 1: field 'completion_ids' must be list"):
    gen.save(path, [rows[0], {**rows[1], "completion_ids": "5"}], meta)
  assert path.read_bytes() == before                          # a failed save leaves the old file
  assert not [p for p in path.parent.iterdir() if p.name != path.name]

  bad = tmp_path / "bad.jsonl"
  bad.write_text("\n".join(lines[1:]) + "\n")
  with pytest.raises(ValueError, match=r"bad.jsonl: line 1: expected the meta record"):
    gen.load(bad)
  bad.write_text("\n".join(lines[:2]) + "\n")
  with pytest.raises(ValueError, match=r"line 1: field 'meta.count' says 2 rows, the file has 1"):
    gen.load(bad)
  row = json.loads(lines[2])
  del row["stopped"]
  bad.write_text("\n".join([lines[0], lines[1], json.dumps(row)]) + "\n")
  with pytest.raises(ValueError, match=r"bad.jsonl: line 3: field 'stopped' is missing"):
    gen.load(bad)
  with pytest.raises(FileNotFoundError, match="no generations file"):
    gen.load(tmp_path / "absent.jsonl")


def test_sampling_section_and_bad_arguments(stories):
  cfg = gen.sampling_section()
  assert (cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed) == (48, 1.0, 1.0, 0)
  assert cfg.batch_size >= 1 and cfg.num_prompts >= 1
  model, tok = stories
  with pytest.raises(ValueError, match="prompt 1: encodes to no tokens"):
    gen.continue_prompts(model, tok, ["a", ""], max_new_tokens=2, temperature=1.0, top_p=1.0,
                         seed=0, batch_size=2, add_bos=False)
  with pytest.raises(TypeError, match="prompt 0: expected a string, got int"):
    gen.continue_prompts(model, tok, [5], max_new_tokens=2, temperature=1.0, top_p=1.0, seed=0,
                         batch_size=2)
  with pytest.raises(TypeError, match="prompts must be a sequence of strings"):
    gen.continue_prompts(model, tok, "Once", max_new_tokens=2, temperature=1.0, top_p=1.0, seed=0,
                         batch_size=2)
  for key, value in [("batch_size", 0), ("max_new_tokens", 0), ("seed", -1), ("top_p", 0.0),
                     ("temperature", -1.0)]:
    args = dict(max_new_tokens=2, temperature=1.0, top_p=1.0, seed=0, batch_size=2)
    with pytest.raises(ValueError, match=key):
      gen.continue_prompts(model, tok, ["a"], **{**args, key: value})
