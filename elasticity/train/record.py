"""What a training workdir records about its run: the config, its fingerprint and the completion marker.

    <workdir>/config.json     the resolved ConfigDict as JSON (written before anything is loaded)
    <workdir>/config.sha256   the fingerprint: sha256 of the canonical JSON of the keys that define the run
    <workdir>/DONE.json       written atomically, last, when the run completed: the `RunResult` fields
    <workdir>/metrics.jsonl   (written by `elasticity.train.metrics`) cut back to the checkpoint a run
                              resumes from (`trim_metrics`)

A workdir that already holds a ``config.json`` is a run being resumed (or a finished one): its
config must define the same run, or `check_config` raises a ``ValueError`` naming the first
differing key and both values — before any model is loaded. The keys in `RESUMABLE_KEYS` are left
out of the comparison and of the fingerprint: they change how a run is logged, laid out or joined,
not what it computes, so a resumed run may set them anew. A workdir with ``DONE.json`` is not
trained or exported again (`finished` returns its stored `RunResult`, paths rebased if the folder
moved). The workdir is a file-system path every process sees, never a URL (`resolve_workdir`).

Only process 0 writes; every file goes through `elasticity.atomic`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
from absl import logging

from elasticity import atomic

CONFIG_FILE = "config.json"
FINGERPRINT_FILE = "config.sha256"
DONE_FILE = "DONE.json"

# Keys (or whole sections, by prefix) that may change when a run is resumed; everything else
# defines the run. Logging cadence and sinks; checkpoint cadence, retention and async writes; how
# the processes find each other; the device layout (mesh, sharding rules, remat, the layer layout,
# the attention core): a checkpoint restores onto another mesh and across the scanned and unrolled
# layouts by design, which changes numbers only by reduction order (layouts and attention cores are
# tested to agree to 1e-6); eval batching (throughput only). Cell identities in an experiment grid
# leave the same keys out (`elasticity.experiments.core.cells`).
RESUMABLE_KEYS: tuple[str, ...] = (
    "train.log_every",
    "metrics.tensorboard",
    "metrics.peak_flops",
    "checkpoint.every",
    "checkpoint.keep",
    "checkpoint.async_save",
    "checkpoint.at_end",
    "distributed",
    "mesh",
    "sharding",
    "model.remat",
    "model.scan_layers",
    "model.attention_impl",
    "eval.batch_size",
)


@dataclasses.dataclass
class RunResult:
  """What `elasticity.train.loop.train` returns, and what ``DONE.json`` stores for a completed run."""
  status: str                  # "completed" | "preempted"
  step: int                    # optimizer steps done
  total_steps: int
  workdir: str
  export_dir: str | None = None
  last: dict[str, float] = dataclasses.field(default_factory=dict)


def _plain(cfg: Any) -> Any:
  """The config as JSON-compatible values (tuples become lists), as it reads back from JSON."""
  d = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg
  return json.loads(json.dumps(d, sort_keys=True, default=str))


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; an empty section stays as ``{}`` under its key."""
  out: dict[str, Any] = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping) and v:
      out.update(flatten(v, key + "."))
    else:
      out[key] = v
  return out


def _resumable(key: str) -> bool:
  return any(key == r or key.startswith(r + ".") for r in RESUMABLE_KEYS)


def defining_keys(cfg: Any) -> dict[str, Any]:
  """The flattened config without `RESUMABLE_KEYS`: what defines the run."""
  return {k: v for k, v in flatten(_plain(cfg)).items() if not _resumable(k)}


def fingerprint(cfg: Any) -> str:
  """sha256 (hex) of the canonical JSON (sorted keys, no spaces) of `defining_keys`."""
  text = json.dumps(defining_keys(cfg), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def first_difference(stored: Any, current: Any) -> tuple[str, Any, Any] | None:
  """``(key, stored value, current value)`` of the first (sorted) defining key that differs."""
  a, b = defining_keys(stored), defining_keys(current)
  missing = "<absent>"
  for key in sorted(set(a) | set(b)):
    if a.get(key, missing) != b.get(key, missing):
      return key, a.get(key, missing), b.get(key, missing)
  return None


def _has_progress(workdir: str | os.PathLike) -> bool:
  """True once a run in ``workdir`` has saved a checkpoint or completed: before that, a failed start
  (bad data, a typo found late) leaves nothing a corrected command could resume."""
  ckpts = Path(workdir) / "checkpoints"
  return (Path(workdir) / DONE_FILE).exists() or (
      ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()))


def check_config(workdir: str | os.PathLike, cfg: Any) -> None:
  """Raise ``ValueError`` if ``workdir`` holds a ``config.json`` that defines another run that saved a
  checkpoint or completed; the config of a start that failed before its first checkpoint may change."""
  path = Path(workdir) / CONFIG_FILE
  if not path.exists():
    return
  try:
    stored = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e.msg}); remove it or use another workdir") from None
  diff = first_difference(stored, cfg)
  if diff is not None and not _has_progress(workdir):
    logging.warning("%s: re-configured (config.%s was %r, is %r now): the earlier start wrote no "
                    "checkpoint", path, diff[0], diff[1], diff[2])
    return
  if diff is not None:
    key, old, new = diff
    raise ValueError(f"{path}: the workdir holds another run: config.{key} was {old!r} there, is "
                     f"{new!r} now; use another workdir, or the config the run was started with "
                     f"(keys that may change on resume: {', '.join(RESUMABLE_KEYS)})")


def write_config(workdir: str | os.PathLike, cfg: Any) -> str:
  """Write ``config.json`` and ``config.sha256`` (process 0); return the fingerprint."""
  fp = fingerprint(cfg)
  if jax.process_index() == 0:
    atomic.write_json(Path(workdir) / CONFIG_FILE, _plain(cfg))
    atomic.write_text(Path(workdir) / FINGERPRINT_FILE, fp + "\n")
  return fp


def read_done(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """The fields stored in ``DONE.json``, or None if the run has not completed."""
  path = Path(workdir) / DONE_FILE
  if not path.exists():
    return None
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e.msg}); remove it to finish the run again") from None


def write_done(workdir: str | os.PathLike, fields: Mapping[str, Any]) -> None:
  """Write ``DONE.json`` atomically (process 0): the last file a completed run writes."""
  if jax.process_index() == 0:
    atomic.write_json(Path(workdir) / DONE_FILE, dict(fields))


def resolve_workdir(workdir: str | os.PathLike) -> str:
  """The absolute path of ``workdir``; a URL is refused (``ValueError``)."""
  if "://" in os.fspath(workdir):
    raise ValueError(f"workdir {os.fspath(workdir)!r}: a URL; the workdir must be a file-system path "
                     "all processes see (mount the bucket, e.g. with gcsfuse, or use NFS/Filestore)")
  path = os.path.abspath(os.fspath(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise NotADirectoryError(f"{path}: the workdir is a file, not a folder; choose another --workdir")
  if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
    raise PermissionError(f"{path}: the workdir is not writable; choose another --workdir")
  return path


def finished(workdir: str) -> RunResult | None:
  """The stored result of a completed run in ``workdir`` (paths rebased if the folder moved)."""
  fields = read_done(workdir)
  if fields is None:
    return None
  names = {f.name for f in dataclasses.fields(RunResult)}
  missing = sorted(n for n in ("status", "step", "total_steps", "workdir") if n not in fields)
  if missing:
    raise ValueError(f"{os.path.join(workdir, DONE_FILE)}: missing field(s) {missing}")
  result = RunResult(**{k: v for k, v in fields.items() if k in names})
  old = result.workdir
  if old != workdir:
    if result.export_dir and os.path.commonpath([old, result.export_dir]) == old:
      result.export_dir = os.path.join(workdir, os.path.relpath(result.export_dir, old))
    result.workdir = workdir
  logging.info("%s: completed before (%d steps); not trained or exported again", workdir, result.step)
  return result


def trim_metrics(workdir: str, step: int) -> None:
  """Keep only the ``metrics.jsonl`` records of steps <= ``step`` (the checkpoint a run resumes
  from; 0 for a fresh start), rewritten atomically (process 0).

  A run killed after its last checkpoint logged steps it will run again, and may have left half a
  line; without this the resumed log would hold them twice. The log then equals an uninterrupted
  run's.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  keep, dropped = [], 0
  for n, line in enumerate(lines, 1):
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      if n < len(lines):
        raise ValueError(f"{path}: line {n}: not valid JSON (only a last line can be cut short by "
                         "a killed run)") from None
      dropped += 1
      continue
    if int(rec.get("step", 0)) <= step:
      keep.append(line)
    else:
      dropped += 1
  if dropped:
    logging.info("%s: %d record(s) after step %d (or cut short) dropped before resuming", path,
                 dropped, step)
    atomic.write_text(path, "".join(line + "\n" for line in keep))
