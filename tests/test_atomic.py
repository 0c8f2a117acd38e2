"""elasticity.atomic: writes are all-or-nothing, and a failed write leaves the old content and no debris."""

from __future__ import annotations

import os

import pytest

from elasticity import atomic


def test_write_json_and_jsonl_roundtrip(tmp_path):
  atomic.write_json(tmp_path / "a" / "x.json", {"b": 1, "a": [1, 2]})
  assert (tmp_path / "a" / "x.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
  atomic.append_jsonl(tmp_path / "r.jsonl", [{"i": 1}])
  atomic.append_jsonl(tmp_path / "r.jsonl", [{"i": 2}, {"i": 3}])
  assert [r["i"] for r in atomic.read_jsonl(tmp_path / "r.jsonl")] == [1, 2, 3]


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path):
  path = atomic.write_text(tmp_path / "f.txt", "old")

  def boom(tmp):
    with open(tmp, "w") as f:
      f.write("half")
    raise RuntimeError("disk full")

  with pytest.raises(RuntimeError):
    atomic.write_with(path, boom)
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["f.txt"]


def test_bad_jsonl_line_names_file_and_line(tmp_path):
  p = tmp_path / "r.jsonl"
  p.write_text('{"a": 1}\n{oops\n')
  with pytest.raises(ValueError, match=r"r\.jsonl: line 2"):
    atomic.read_jsonl(p)


def test_directory_replaces_whole_and_keeps_old_on_error(tmp_path):
  out = tmp_path / "export"
  with atomic.directory(out) as tmp:
    (tmp / "a").write_text("1")
  with pytest.raises(KeyError):
    with atomic.directory(out) as tmp:
      (tmp / "b").write_text("2")
      raise KeyError("x")
  assert sorted(os.listdir(out)) == [atomic.MARKER, "a"]
  with atomic.directory(out) as tmp:
    (tmp / "c").write_text("3")
  assert sorted(os.listdir(out)) == [atomic.MARKER, "c"]
  assert sorted(os.listdir(tmp_path)) == ["export"]


def test_directory_restores_the_old_version_after_a_crash_between_renames(tmp_path):
  out = tmp_path / "export"
  old = tmp_path / ".export.old"
  old.mkdir()
  (old / "a").write_text("1")          # what a crash after the first rename leaves
  (old / atomic.MARKER).write_text("")
  with pytest.raises(RuntimeError):
    with atomic.directory(out):
      raise RuntimeError("crash")
  assert (out / "a").read_text() == "1"


def test_written_files_and_folders_get_the_umask_permissions_not_mkstemps(tmp_path):
  old = os.umask(0o022)
  try:
    f = atomic.write_text(tmp_path / "r.txt", "x")
    with atomic.directory(tmp_path / "d") as tmp:
      (tmp / "a").write_text("1")
  finally:
    os.umask(old)
  assert f.stat().st_mode & 0o777 == 0o644
  assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755


def test_directory_never_replaces_what_it_did_not_write(tmp_path):
  mine = tmp_path / "mine"
  mine.mkdir()
  (mine / "notes.txt").write_text("keep me")
  with pytest.raises(atomic.ExistingFolderError, match=r"mine: exists and holds files this command "
                                                       r"did not write.*--overwrite"):
    with atomic.directory(mine) as tmp:
      (tmp / "a").write_text("1")
  assert os.listdir(mine) == ["notes.txt"] and sorted(os.listdir(tmp_path)) == ["mine"]
  with atomic.directory(mine, ours=lambda d: (d / "notes.txt").exists()) as tmp:   # its writer's own
    (tmp / "a").write_text("1")
  assert sorted(os.listdir(mine)) == [atomic.MARKER, "a"]
  empty = tmp_path / "empty"
  empty.mkdir()
  with atomic.directory(empty) as tmp:
    (tmp / "b").write_text("2")
  other = tmp_path / "other"
  other.mkdir()
  (other / "x").write_text("x")
  with atomic.directory(other, overwrite=True) as tmp:
    (tmp / "c").write_text("3")
  assert sorted(os.listdir(other)) == [atomic.MARKER, "c"]
  afile = tmp_path / "afile"
  afile.write_text("x")
  with pytest.raises(atomic.ExistingFolderError, match="afile: exists and is not a folder"):
    with atomic.directory(afile):
      pass
  assert afile.read_text() == "x"


@pytest.mark.parametrize("what", ["checkpoints", "DONE.json", "metrics.jsonl"])
def test_a_training_workdir_is_never_replaced_even_with_overwrite(tmp_path, what):
  run = tmp_path / "run"
  run.mkdir()
  (run / atomic.MARKER).write_text("")     # even one that also holds an export of ours
  (run / what).mkdir() if what == "checkpoints" else (run / what).write_text("{}")
  for overwrite in (False, True):
    with pytest.raises(atomic.ExistingFolderError, match=r"run: is a training run's workdir"):
      with atomic.directory(run, overwrite=overwrite) as tmp:
        (tmp / "a").write_text("1")
  assert sorted(os.listdir(run)) == sorted([atomic.MARKER, what])


def test_private_files_of_a_writer_get_a_plain_opens_mode(tmp_path):
  old = os.umask(0o022)
  try:
    with atomic.directory(tmp_path / "d") as tmp:
      (tmp / "w.bin").write_bytes(b"x")
      os.chmod(tmp / "w.bin", 0o600)       # what safetensors' save_file leaves
  finally:
    os.umask(old)
  assert (tmp_path / "d" / "w.bin").stat().st_mode & 0o777 == 0o644
