"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of one.

Every result, report, table, export and cache the project writes goes through here:

    from elasticity import atomic
    atomic.write_text(path, text)                 # tmp file in the same folder + os.replace
    atomic.write_json(path, obj)                  # the same, JSON (sorted keys, trailing newline)
    atomic.append_jsonl(path, rows)               # rewrite-with-append: old rows + new rows, atomically
    with atomic.directory(out_dir) as tmp:        # fill ``tmp``; it becomes ``out_dir`` on success
      ...

A failure (an exception, Ctrl-C) removes the temporary and leaves what was there before intact.

No writer deletes what it did not write: every folder `directory` writes carries a marker file
(``MARKER``), and an existing folder is replaced only when it carries that marker (an earlier output
of ours), is empty, or its writer recognises it as its own (``ours``), or with ``overwrite=True`` — and
never, even then, when it is a training run's workdir (``checkpoints/``, ``DONE.json``,
``metrics.jsonl``). Anything else is refused with `ExistingFolderError`, naming the folder. For a
folder that is replaced, the old one is moved aside, the new one renamed in, then the old one is
deleted; if the process dies between the two renames, `directory` finds the ``.<name>.old`` sibling
the next time and restores it before writing, so the previous version is never lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Callable


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _tmp_file(path: Path, suffix: str = ".tmp") -> str:
  """A temporary sibling of ``path`` with the permissions a plain ``open`` would give (mkstemp's are
  0600: results in a shared lab folder must stay readable by the group)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
  os.close(fd)
  os.chmod(tmp, 0o666 & ~_umask())
  return tmp


def write_with(path: str | os.PathLike, writer: Callable[[str], None], suffix: str = ".tmp") -> Path:
  """Call ``writer(tmp_path)`` to write a temporary file, then rename it to ``path``.

  ``suffix`` is the temporary's file ending, for writers that insist on one (``np.savez`` adds
  ``.npz`` unless the name ends with it).
  """
  path = Path(path)
  tmp = _tmp_file(path, suffix)
  try:
    writer(tmp)
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    raise
  return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
  def w(tmp: str) -> None:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
  return write_with(path, w)


def write_text(path: str | os.PathLike, text: str) -> Path:
  return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
  return write_text(path, json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
  return write_text(path, "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n"
                                  for r in rows))


def read_json(path: str | os.PathLike) -> Any:
  """A JSON file's value; invalid JSON names the file."""
  path = Path(path)
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The rows of a JSON-lines file ([] if it does not exist); a bad line names the file and line."""
  path = Path(path)
  if not path.exists():
    return []
  rows = []
  with open(path, encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {i}: not valid JSON ({e.msg})") from None
  return rows


def append_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
  """Append ``rows`` by rewriting the whole file atomically (results files are small)."""
  return write_jsonl(path, [*read_jsonl(path), *rows])


MARKER = ".elasticity-output"
_TRAINING = ("checkpoints", "DONE.json", "metrics.jsonl")


class ExistingFolderError(FileExistsError):
  """An output folder exists and holds something this writer did not write."""


def training_workdir(path: str | os.PathLike) -> bool:
  """True if ``path`` holds a training run (its checkpoints, metrics or DONE record)."""
  return any((Path(path) / name).exists() for name in _TRAINING)


def check_replaceable(out_dir: str | os.PathLike, *, overwrite: bool = False,
                      ours: Callable[[Path], bool] | None = None) -> None:
  """Raise `ExistingFolderError` unless writing ``out_dir`` would lose nothing we did not write."""
  out_dir = Path(out_dir)
  if not out_dir.exists():
    return
  if not out_dir.is_dir():
    raise ExistingFolderError(f"{out_dir}: exists and is not a folder; choose another output path")
  if training_workdir(out_dir):
    raise ExistingFolderError(f"{out_dir}: is a training run's workdir (it holds "
                              f"{', '.join(n for n in _TRAINING if (out_dir / n).exists())}); "
                              "it is never replaced, not even with --overwrite: choose another folder")
  if (out_dir / MARKER).exists() or not any(out_dir.iterdir()) or overwrite:
    return
  if ours is not None and ours(out_dir):
    return
  raise ExistingFolderError(f"{out_dir}: exists and holds files this command did not write; choose a "
                            "new or empty folder, or pass --overwrite to replace it")


def _recover(out_dir: Path) -> None:
  old = out_dir.with_name(f".{out_dir.name}.old")
  if old.exists() and not out_dir.exists():
    old.rename(out_dir)          # died between the two renames: the previous version comes back
  elif old.exists():
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def directory(out_dir: str | os.PathLike, *, overwrite: bool = False,
              ours: Callable[[Path], bool] | None = None, mark: bool = True) -> Iterator[Path]:
  """A temporary sibling folder to fill; renamed to ``out_dir`` when the block exits cleanly.

  An existing ``out_dir`` is replaced only as `check_replaceable` allows (checked before and again
  just before the rename). ``mark=False`` leaves the marker out, for a folder whose writer recognises
  its own (``ours``) and whose readers list it (a report's plots).
  """
  out_dir = Path(out_dir)
  out_dir.parent.mkdir(parents=True, exist_ok=True)
  _recover(out_dir)
  check_replaceable(out_dir, overwrite=overwrite, ours=ours)
  tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
  os.chmod(tmp, 0o777 & ~_umask())
  try:
    yield tmp
    if mark:
      (tmp / MARKER).write_text("written by elasticity; a later output may replace this folder\n")
    for f in tmp.rglob("*"):     # writers that create 0600 files (safetensors) get a plain open's mode
      if f.is_file() and not f.is_symlink() and f.stat().st_mode & 0o077 == 0:
        os.chmod(f, 0o666 & ~_umask())
    check_replaceable(out_dir, overwrite=overwrite, ours=ours)
    if out_dir.exists():
      old = out_dir.with_name(f".{out_dir.name}.old")
      out_dir.rename(old)
      tmp.rename(out_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      tmp.rename(out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
