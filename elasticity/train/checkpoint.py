"""Checkpoints of a training run: the only module that talks to Orbax.

A checkpoint of step N (``<workdir>/checkpoints/<N>/``) holds three items:

* ``state``: the train state pytree (step, params, optimizer state, RNG) — `ocp.args.StandardSave`;
* ``data``: the batch stream's position (`BatchStream.state()`) — `ocp.args.JsonSave`;
* ``meta``: JSON facts about the run (config summary, wall time, tokens seen).

Writes are atomic (Orbax writes to a temporary directory and renames it when complete), so a run
killed mid-save leaves the previous checkpoint intact. Restoring takes abstract targets
(`jax.ShapeDtypeStruct` with a `NamedSharding`), so a checkpoint written on one mesh restores onto
another; each host reads only its own shards.

Integrity: Orbax keeps no checksums, so every finished checkpoint is sealed with a manifest
(``<step>/manifest.sha256.json``: each file's size and SHA-256), written last, as soon as Orbax has
finalised the step: the step's folder appears under its final name only then (a watcher thread seals
asynchronous saves as they land; Orbax's own post-finalisation callback runs before its last write). `latest_step` and `restore` trust only a step whose files match its
manifest: a damaged step (a flipped byte, a truncated file, a missing manifest) is reported naming the
step and the file, moved aside to ``<checkpoints>.damaged/<step>`` (never deleted), and the run falls
back to the newest intact step; with none intact, `restore` refuses (`CheckpointIntegrityError`).

Layer layouts (`elasticity.models.scan`): a state saved with scanned layers restores into an unrolled
run and vice versa. The checkpoint's layout is read from its metadata; the state is restored in that
layout and restacked (params and every parameter-shaped optimizer moment), or, with
``convert_layout=False``, refused with an error naming both layouts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from elasticity import atomic
from elasticity.models import scan

MANIFEST = "manifest.sha256.json"


class CheckpointIntegrityError(RuntimeError):
  """No checkpoint of a run verifies against its manifest."""


def _digest(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()


def _files(step_dir: Path) -> list[Path]:
  return sorted(p for p in step_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def seal(step_dir: str | os.PathLike) -> Path:
  """Write ``step_dir``'s manifest: every file's size and SHA-256 (relative paths, sorted)."""
  step_dir = Path(step_dir)
  files = {str(p.relative_to(step_dir)): {"bytes": p.stat().st_size, "sha256": _digest(p)}
           for p in _files(step_dir)}
  return atomic.write_json(step_dir / MANIFEST, {"version": 1, "files": files})


def damage(step_dir: str | os.PathLike) -> str | None:
  """None when ``step_dir`` matches its manifest, else what is wrong, naming the file."""
  step_dir = Path(step_dir)
  try:
    want = json.loads((step_dir / MANIFEST).read_text())["files"]
  except FileNotFoundError:
    return f"{step_dir / MANIFEST}: no manifest (the step was never sealed)"
  except (ValueError, KeyError, TypeError, UnicodeDecodeError):
    return f"{step_dir / MANIFEST}: damaged manifest"
  have = {str(p.relative_to(step_dir)) for p in _files(step_dir)}
  for rel in sorted(set(want) | have):
    path = step_dir / rel
    if rel not in want:
      return f"{path}: a file the manifest does not list"
    if rel not in have:
      return f"{path}: missing"
    if path.stat().st_size != want[rel]["bytes"]:
      return f"{path}: {path.stat().st_size} bytes, the manifest says {want[rel]['bytes']}"
    if _digest(path) != want[rel]["sha256"]:
      return f"{path}: SHA-256 differs from the manifest"
  return None


class Checkpointer:
  """Save every ``every`` steps, keep the newest ``keep``; restore the latest (or a given) step.

  ``at_end=False``: no checkpoint of a run's last step (`should_save` with ``total_steps``, and the
  loops' final save): for runs whose completion is recorded elsewhere and whose checkpoints are
  deleted once complete (the experiment runner's cells).
  """

  def __init__(self, directory: str | os.PathLike, *, every: int = 0, keep: int = 3,
               async_save: bool = True, at_end: bool = True):
    if every < 0:
      raise ValueError(f"checkpoint.every: must be >= 0 (0 = only at the end), got {every}")
    if keep is not None and keep < 1:
      raise ValueError(f"checkpoint.keep: must be >= 1, got {keep}")
    self.directory = os.fspath(os.path.abspath(directory))
    self.every = int(every)
    self.async_save = bool(async_save)
    self.at_end = bool(at_end)
    self._lock = threading.Lock()
    self._pending: set[int] = set()     # saved, not yet sealed
    self._verified: set[int] = set()    # sealed by this process or checked against their manifest
    self._watcher: threading.Thread | None = None
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    # Handlers registered up front, so a fresh manager (a resumed process) can read a checkpoint's
    # metadata (its layer layout) before anything has been saved or restored through it.
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for item, save, restore in (("state", ocp.args.StandardSave, ocp.args.StandardRestore),
                                ("data", ocp.args.JsonSave, ocp.args.JsonRestore),
                                ("meta", ocp.args.JsonSave, ocp.args.JsonRestore)):
      registry.add(item, save)
      registry.add(item, restore)
    self.manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=registry)

  def _step_dir(self, step: int) -> Path:
    return Path(self.directory) / str(step)

  def _seal_finished(self, *, drop_missing: bool = False) -> bool:
    """Seal the saved steps Orbax has finalised (their folder has its final name); True when none is
    left pending. Process 0 writes the manifest (the folder is shared by every host of a multi-host
    run). ``drop_missing`` (after a wait): a step whose folder is gone was pruned by ``keep``."""
    with self._lock:
      for step in sorted(self._pending):
        if self._step_dir(step).is_dir():
          if jax.process_index() == 0:
            seal(self._step_dir(step))
          self._verified.add(step)
          self._pending.discard(step)
        elif drop_missing:
          self._pending.discard(step)
      return not self._pending

  def _watch(self) -> None:
    """Seal asynchronous saves as soon as they land, while training goes on (a daemon thread)."""
    while not self._seal_finished():
      time.sleep(0.05)

  def verify(self, step: int) -> str | None:
    """None if ``step`` is intact (its files match its manifest), else what is wrong with it."""
    if step in self._verified:
      return None
    problem = damage(self._step_dir(step))
    if problem is None:
      self._verified.add(step)
    return problem

  def _quarantine(self, step: int, problem: str) -> None:
    """Move a damaged step out of Orbax's sight (``<checkpoints>.damaged/<step>``); never delete it."""
    if jax.process_index() != 0:
      logging.warning("checkpoint: step %d is damaged (%s); process 0 moves it aside", step, problem)
      return
    dest = Path(f"{self.directory}.damaged") / str(step)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
      dest = dest.with_name(f"{step}.{len(list(dest.parent.iterdir()))}")
    shutil.move(str(self._step_dir(step)), str(dest))
    logging.warning("checkpoint: step %d is damaged (%s); moved to %s", step, problem, dest)
    self.manager.reload()

  def latest_step(self) -> int | None:
    """The newest intact step (damaged newer ones are reported and moved aside), or None."""
    self.wait()
    for step in sorted(self.manager.all_steps(), reverse=True):
      problem = self.verify(step)
      if problem is None:
        return step
      self._quarantine(step, problem)
    return None

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int, total_steps: int | None = None) -> bool:
    """Whether ``step`` gets a periodic checkpoint; the last step (``>= total_steps``) only when
    ``at_end``."""
    if total_steps is not None and step >= total_steps and not self.at_end:
      return False
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state: Any, data_state: Mapping[str, Any], meta: Mapping[str, Any], *,
           wait: bool = False) -> None:
    """Save (asynchronously unless ``wait``); a checkpoint of the same step is not rewritten."""
    if step in self.manager.all_steps():
      return
    self.wait()
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data_state)),
        meta=ocp.args.JsonSave(dict(meta))), force=True)
    logging.info("checkpoint: saving step %d to %s", step, self.directory)
    with self._lock:
      self._pending.add(step)
    if wait or not self.async_save:
      self.wait()
    elif self._watcher is None or not self._watcher.is_alive():
      self._watcher = threading.Thread(target=self._watch, name="checkpoint-sealer", daemon=True)
      self._watcher.start()

  def saved_layout(self, step: int) -> str | None:
    """"scanned" | "unrolled" | None (no parameter tree found) of the state saved at ``step``."""
    try:
      meta = self.manager.item_metadata(step)["state"]
    except (KeyError, TypeError, ValueError, FileNotFoundError):
      return None
    return scan.tree_layout(_as_dicts(meta))

  def restore(self, abstract_state: Any, step: int | None = None, *, convert_layout: bool = True
              ) -> tuple[int, Any, dict[str, Any], dict[str, Any]]:
    """``(step, state, data_state, meta)`` of ``step`` (default: latest) into the abstract targets.

    A checkpoint of the other layer layout is converted (``convert_layout``) or refused.
    """
    if step is None:
      had = self.all_steps()
      step = self.latest_step()
      if step is None and had:
        raise CheckpointIntegrityError(
            f"{self.directory}: no intact checkpoint (steps {had} were damaged and moved to "
            f"{self.directory}.damaged); start the run in a new workdir")
    elif (problem := self.verify(step)) is not None:
      raise CheckpointIntegrityError(f"checkpoint step {step} is damaged: {problem}")
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
    want, saved = scan.tree_layout(abstract_state), self.saved_layout(step)
    target = abstract_state
    if want and saved and want != saved:
      if not convert_layout:
        raise ValueError(f"{self.directory}: step {step} was saved with {saved} layers, but this run "
                         f"uses {want} layers (config.model.scan_layers="
                         f"{want == scan.SCANNED}); set it to {saved == scan.SCANNED} or restore "
                         f"with convert_layout=True")
      logging.info("checkpoint: step %d has %s layers; converting to %s", step, saved, want)
      target = scan.convert_tree(abstract_state, saved == scan.SCANNED, abstract=True)
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    state = out["state"]
    if target is not abstract_state:
      state = scan.convert_tree(state, want == scan.SCANNED)
      shardings = jax.tree.map(lambda a: a.sharding, abstract_state)
      state = jax.device_put(state, shardings)
    logging.info("checkpoint: restored step %d from %s", step, self.directory)
    return step, state, dict(out["data"]), dict(out["meta"] or {})

  def reached_preemption(self, step: int) -> bool:
    """True on every host once any host has been told it will be preempted (multi-host TPU)."""
    try:
      return bool(self.manager.reached_preemption(step))
    except Exception:  # noqa: BLE001 — no preemption service (single process, CPU)
      return False

  def wait(self) -> None:
    """Block until every save is written and sealed."""
    self.manager.wait_until_finished()
    self._seal_finished(drop_missing=True)
    if self._watcher is not None:
      self._watcher.join()

  def close(self) -> None:
    self.wait()
    self.manager.close()


def _as_dicts(tree):
  """Orbax tree metadata as plain nested dicts (enough to read the layer layout)."""
  if hasattr(tree, "keys") and not isinstance(tree, dict):
    return {k: _as_dicts(tree[k]) for k in tree.keys()}
  if isinstance(tree, dict):
    return {k: _as_dicts(v) for k, v in tree.items()}
  return tree
