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
  assert sorted(os.listdir(out)) == ["a"]
  with atomic.directory(out) as tmp:
    (tmp / "c").write_text("3")
  assert sorted(os.listdir(out)) == ["c"]
  assert sorted(os.listdir(tmp_path)) == ["export"]


def test_directory_restores_the_old_version_after_a_crash_between_renames(tmp_path):
  out = tmp_path / "export"
  old = tmp_path / ".export.old"
  old.mkdir()
  (old / "a").write_text("1")          # what a crash after the first rename leaves
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
