"""Checkpoints of a training run: the only module that talks to Orbax.

A checkpoint of step N (``<workdir>/checkpoints/<N>/``) holds three items:

* ``state``: the train state pytree (step, params, optimizer state, RNG) — `ocp.args.StandardSave`;
* ``data``: the batch stream's position (`BatchStream.state()`) — `ocp.args.JsonSave`;
* ``meta``: JSON facts about the run (config summary, wall time, tokens seen).

Writes are atomic (Orbax writes to a temporary directory and renames it when complete), so a run
killed mid-save leaves the previous checkpoint intact. Restoring takes abstract targets
(`jax.ShapeDtypeStruct` with a `NamedSharding`), so a checkpoint written on one mesh restores onto
another; each host reads only its own shards.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Save every ``every`` steps, keep the newest ``keep``; restore the latest (or a given) step."""

  def __init__(self, directory: str | os.PathLike, *, every: int = 0, keep: int = 3,
               async_save: bool = True):
    if every < 0:
      raise ValueError(f"checkpoint.every: must be >= 0 (0 = only at the end), got {every}")
    if keep is not None and keep < 1:
      raise ValueError(f"checkpoint.keep: must be >= 1, got {keep}")
    self.directory = os.fspath(os.path.abspath(directory))
    self.every = int(every)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=("state", "data", "meta"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state: Any, data_state: Mapping[str, Any], meta: Mapping[str, Any], *,
           wait: bool = False) -> None:
    """Save (asynchronously unless ``wait``); a checkpoint of the same step is not rewritten."""
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(dict(data_state)),
        meta=ocp.args.JsonSave(dict(meta))), force=True)
    logging.info("checkpoint: saving step %d to %s", step, self.directory)
    if wait:
      self.manager.wait_until_finished()

  def restore(self, abstract_state: Any, step: int | None = None
              ) -> tuple[int, Any, dict[str, Any], dict[str, Any]]:
    """``(step, state, data_state, meta)`` of ``step`` (default: latest) into the abstract targets."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    logging.info("checkpoint: restored step %d from %s", step, self.directory)
    return step, out["state"], dict(out["data"]), dict(out["meta"] or {})

  def reached_preemption(self, step: int) -> bool:
    """True on every host once any host has been told it will be preempted (multi-host TPU)."""
    try:
      return bool(self.manager.reached_preemption(step))
    except Exception:  # noqa: BLE001 — no preemption service (single process, CPU)
      return False

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()
