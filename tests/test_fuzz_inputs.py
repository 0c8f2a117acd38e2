"""Fuzzed bad input: random truncations, byte flips and wrong types thrown at the data loaders, the
results reader and the checkpoint verifier. Each case either reads correctly or ends in the project's
own error type with the file (or key) in its message — never a crash of another kind, never a silent
wrong value. Case counts: ``pytest tests/test_fuzz_inputs.py --hypothesis-show-statistics``."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elasticity import data
from elasticity.data.errors import DataError
from elasticity.report.results import ResultsError, read_rows
from elasticity.train.checkpoint import MANIFEST, Checkpointer, damage

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
                           | st.text(max_size=8),
                           lambda kids: st.lists(kids, max_size=3)
                           | st.dictionaries(st.text(max_size=5), kids, max_size=3), max_leaves=6)


def _mutate(blob: bytes, how: str, where: float, value: int) -> bytes:
  i = min(int(where * len(blob)), max(len(blob) - 1, 0))
  if how == "truncate":
    return blob[:i]
  if how == "flip":
    return blob[:i] + bytes([blob[i] ^ (value or 1)]) + blob[i + 1:] if blob else blob
  return blob[:i] + bytes([value]) * 3 + blob[i:]           # insert garbage


MUTATION = st.tuples(st.sampled_from(["truncate", "flip", "insert"]), st.floats(0, 1),
                     st.integers(0, 255))


def _sample(shared: Path, name: str, tmp: Path) -> Path:
  """A small valid file of each local format, cut from the shared data (the first records)."""
  if name == "alpaca":
    src = json.loads((shared / "data/alpaca/alpaca_data_first1805.json").read_text())[:4]
    out = tmp / "alpaca.json"
    out.write_text(json.dumps(src, indent=1))
  elif name == "beavertails":
    lines = (shared / "data/beavertails/beavertails_qa_sample.csv").read_text().splitlines(True)
    out = tmp / "beavertails.csv"
    out.write_text("".join(lines[:6]))
  elif name == "truthfulqa":
    lines = (shared / "data/truthfulqa/TruthfulQA.csv").read_text().splitlines(True)
    out = tmp / "TruthfulQA.csv"
    out.write_text("".join(lines[:5]))
  else:
    with gzip.open(shared / "data/hh_rlhf/harmless-base_test.jsonl.gz", "rt") as f:
      rows = [next(f) for _ in range(4)]
    out = tmp / "hh.jsonl"
    out.write_text("".join(rows))
  return out


def _check_records(recs) -> None:
  """What a loader returns is well typed: every text field a string (never None, never a number)."""
  for r in recs:
    for k in ("prompt", "response", "chosen", "rejected"):
      if k in r:
        assert isinstance(r[k], str), (k, r[k])


@pytest.mark.parametrize("name", ["alpaca", "beavertails", "truthfulqa", "hh_rlhf"])
@FUZZ
@given(mutation=MUTATION)
def test_loaders_on_damaged_files(shared, tmp_path_factory, name, mutation):
  tmp = tmp_path_factory.mktemp(name)
  path = _sample(shared, name, tmp)
  path.write_bytes(_mutate(path.read_bytes(), *mutation))
  try:
    recs = data.load_dataset(name, path=path)
  except DataError as e:
    assert path.name in str(e), str(e)
    return
  _check_records(recs)
  assert len(recs) <= 6


@pytest.mark.parametrize("name", ["alpaca", "hh_rlhf"])
@FUZZ
@given(field=st.sampled_from(["instruction", "input", "output", "chosen", "rejected"]),
       value=JSON_VALUES, record=st.integers(0, 3))
def test_loaders_on_wrong_types(shared, tmp_path_factory, name, field, value, record):
  tmp = tmp_path_factory.mktemp(name)
  path = _sample(shared, name, tmp)
  if name == "alpaca":
    rows = json.loads(path.read_text())
    rows[record][field] = value
    path.write_text(json.dumps(rows))
  else:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    rows[record][field] = value
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  try:
    recs = data.load_dataset(name, path=path)
  except DataError as e:
    assert path.name in str(e) and (field in str(e) or "record" in str(e) or "line" in str(e)), str(e)
    return
  _check_records(recs)
  if not isinstance(value, str) and field in rows[record] and (
      (name == "alpaca" and field in ("instruction", "output"))
      or (name == "hh_rlhf" and field in ("chosen", "rejected"))):
    raise AssertionError(f"a non-string {field} ({value!r}) was read without an error")


GOOD_ROW = {"experiment": "rebound", "cell": "s1/pos100", "point": "n0", "seed": 1, "parent": None,
            "config_hash": "abc", "coords": {"n_pos": 100}, "metrics": {"score": 0.5, "kl": [0.1, 0.2]}}


@FUZZ
@given(mutation=MUTATION)
def test_results_reader_on_damaged_files(tmp_path_factory, mutation):
  path = tmp_path_factory.mktemp("r") / "results.jsonl"
  path.write_bytes(_mutate((json.dumps(GOOD_ROW) + "\n").encode() * 3, *mutation))
  try:
    rows = read_rows(path)
  except ResultsError as e:
    assert str(path) in str(e)
    return
  except UnicodeDecodeError:
    raise AssertionError("a byte that is not UTF-8 crashed the reader") from None
  for r in rows:
    assert isinstance(r.cell, str) and all(v is None or isinstance(v, (float, list))
                                           for v in r.metrics.values())


@FUZZ
@given(field=st.sampled_from(sorted(GOOD_ROW)), value=JSON_VALUES)
def test_results_reader_on_wrong_types(tmp_path_factory, field, value):
  path = tmp_path_factory.mktemp("r") / "results.jsonl"
  row = dict(GOOD_ROW, **{field: value})
  path.write_text(json.dumps(row) + "\n")
  try:
    (got,) = read_rows(path)
  except ResultsError as e:
    assert str(path) in str(e) and field in str(e) or "expected a JSON object" in str(e), str(e)
    return
  assert got.experiment == row["experiment"] and got.cell == row["cell"]


@pytest.fixture(scope="module")
def sealed_step(tmp_path_factory):
  root = tmp_path_factory.mktemp("ck") / "checkpoints"
  ck = Checkpointer(root, async_save=False)
  ck.save(1, {"w": jnp.arange(2048, dtype=jnp.float32), "b": jnp.ones((3,))}, {"pos": 1}, {"m": 1},
          wait=True)
  ck.close()
  return root / "1"


@FUZZ
@given(mutation=MUTATION, pick=st.integers(0, 10 ** 6))
def test_checkpoint_verifier_on_damaged_steps(sealed_step, tmp_path_factory, mutation, pick):
  step = tmp_path_factory.mktemp("s") / "1"
  shutil.copytree(sealed_step, step)
  files = sorted(p for p in step.rglob("*") if p.is_file())
  victim = files[pick % len(files)]
  before = victim.read_bytes()
  after = _mutate(before, *mutation)
  victim.write_bytes(after)
  problem = damage(step)
  if after == before:
    assert problem is None
  else:
    assert problem is not None and (victim.name in problem or MANIFEST in problem), problem
