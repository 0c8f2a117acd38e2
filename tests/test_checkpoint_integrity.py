"""Checkpoints prove their integrity: a manifest of every file's size and SHA-256, written last; a damaged
step is named, moved aside (never deleted) and the newest intact one restored; none intact → refused."""

from __future__ import annotations

import json
import logging as pylogging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from elasticity.train.checkpoint import MANIFEST, CheckpointIntegrityError, Checkpointer, damage


def _state(step: int):
  return {"step": jnp.asarray(step, jnp.int32),
          "params": {"w": jnp.arange(4096, dtype=jnp.float32) * step, "b": jnp.ones((3,)) * step},
          "rng": jnp.asarray([1, 2], jnp.uint32)}


def _abstract():
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))


def _run(tmp_path: Path, steps=(1, 2, 3), async_save=True) -> Path:
  ck = Checkpointer(tmp_path / "checkpoints", keep=5, async_save=async_save)
  for s in steps:
    ck.save(s, _state(s), {"pos": s}, {"note": "x"})
  ck.close()
  return tmp_path / "checkpoints"


def _biggest_data_file(step_dir: Path) -> Path:
  files = [p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST
           and "state" in p.parts]
  return max(files, key=lambda p: p.stat().st_size)


def test_every_finished_step_is_sealed(tmp_path):
  root = _run(tmp_path)
  for s in (1, 2, 3):
    manifest = json.loads((root / str(s) / MANIFEST).read_text())
    assert manifest["files"] and all(len(v["sha256"]) == 64 for v in manifest["files"].values())
    assert damage(root / str(s)) is None


@pytest.mark.parametrize("how", ["flip", "truncate_metadata", "no_manifest"])
def test_a_damaged_step_is_named_moved_aside_and_the_previous_one_restored(tmp_path, how, caplog):
  root = _run(tmp_path)
  step_dir = root / "3"
  if how == "flip":
    f = _biggest_data_file(step_dir)
    data = bytearray(f.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 64])
    f.write_bytes(bytes(data))
    named = f.name
  elif how == "truncate_metadata":
    f = next(p for p in step_dir.rglob("_METADATA"))
    f.write_bytes(f.read_bytes()[:10])
    named = "_METADATA"
  else:
    (step_dir / MANIFEST).unlink()
    named = MANIFEST
  ck = Checkpointer(root, keep=5)
  with caplog.at_level(pylogging.WARNING):
    assert ck.latest_step() == 2
  assert any("step 3 is damaged" in r.getMessage() and named in r.getMessage() for r in caplog.records)
  assert not step_dir.exists() and (tmp_path / "checkpoints.damaged" / "3").is_dir()   # kept
  step, state, data, _ = ck.restore(_abstract())
  assert step == 2 and data == {"pos": 2}
  np.testing.assert_array_equal(state["params"]["w"], np.asarray(_state(2)["params"]["w"]))
  # the run goes on and may write step 3 again
  ck.save(3, _state(3), {"pos": 3}, {}, wait=True)
  assert ck.latest_step() == 3 and damage(root / "3") is None
  ck.close()


def test_no_intact_step_is_refused_naming_the_folder(tmp_path):
  root = _run(tmp_path, steps=(1, 2), async_save=False)
  for s in (1, 2):
    (root / str(s) / MANIFEST).write_text("{not json")
  ck = Checkpointer(root)
  with pytest.raises(CheckpointIntegrityError, match=r"no intact checkpoint.*steps \[1, 2\]"):
    ck.restore(_abstract())
  assert sorted(p.name for p in (tmp_path / "checkpoints.damaged").iterdir()) == ["1", "2"]
  ck.close()


def test_restoring_a_named_damaged_step_is_refused(tmp_path):
  root = _run(tmp_path, steps=(1,), async_save=False)
  f = _biggest_data_file(root / "1")
  f.write_bytes(f.read_bytes()[:-1])
  ck = Checkpointer(root)
  with pytest.raises(CheckpointIntegrityError, match=r"step 1 is damaged: .*bytes, the manifest says"):
    ck.restore(_abstract(), step=1)
  ck.close()
