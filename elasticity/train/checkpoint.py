"""Checkpoints of a training run: the only module that talks to Orbax.

A checkpoint of step N (``<workdir>/checkpoints/<N>/``) holds three items:

* ``state``: the train state pytree (step, params, optimizer state, RNG) — `ocp.args.StandardSave`;
* ``data``: the batch stream's position (`BatchStream.state()`) — `ocp.args.JsonSave`;
* ``meta``: JSON facts about the run (config summary, wall time, tokens seen).

Writes are atomic (Orbax writes to a temporary directory and renames it when complete), so a run
killed mid-save leaves the previous checkpoint intact. Restoring takes abstract targets
(`jax.ShapeDtypeStruct` with a `NamedSharding`), so a checkpoint written on one mesh restores onto
another; each host reads only its own shards.

Layer layouts (`elasticity.models.scan`): a state saved with scanned layers restores into an unrolled
run and vice versa. The checkpoint's layout is read from its metadata; the state is restored in that
layout and restacked (params and every parameter-shaped optimizer moment), or, with
``convert_layout=False``, refused with an error naming both layouts.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from elasticity.models import scan


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
    # Handlers registered up front, so a fresh manager (a resumed process) can read a checkpoint's
    # metadata (its layer layout) before anything has been saved or restored through it.
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for item, save, restore in (("state", ocp.args.StandardSave, ocp.args.StandardRestore),
                                ("data", ocp.args.JsonSave, ocp.args.JsonRestore),
                                ("meta", ocp.args.JsonSave, ocp.args.JsonRestore)):
      registry.add(item, save)
      registry.add(item, restore)
    self.manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=registry)

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
    step = self.latest_step() if step is None else step
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
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _as_dicts(tree):
  """Orbax tree metadata as plain nested dicts (enough to read the layer layout)."""
  if hasattr(tree, "keys") and not isinstance(tree, dict):
    return {k: _as_dicts(tree[k]) for k in tree.keys()}
  if isinstance(tree, dict):
    return {k: _as_dicts(v) for k, v in tree.items()}
  return tree
