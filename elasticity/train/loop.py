"""The training loop: from a validated config and a work directory to a trained, exported model.

    from elasticity.train.loop import train
    result = train(config, workdir)       # configs/sft.py:tiny → <workdir>/{checkpoints,hf,metrics.jsonl}

`train` is safe to call many times in one process (an experiment runner trains one grid cell per
call). What it does, in order:

1. checks the config and the workdir: a workdir holding another run's ``config.json`` is refused
   naming the first differing key; one holding ``DONE.json`` returns its stored `RunResult` at once,
   loading nothing (`elasticity.train.record`);
2. joins the other processes (`jax.distributed`), builds the mesh, writes ``config.json`` and
   ``config.sha256``, and opens the checkpointer and the metric writer in one `contextlib.ExitStack`,
   so an error anywhere later (loading the model, the reference, the eval data) closes them;
3. **data**: tokenizer, examples, the resumable batch stream and the run's length
   (`elasticity.train.init`);
4. **init or restore**: the sharded train state from the pretrained (or random) weights, or the
   latest checkpoint — state, data position and RNG — so a restarted run continues exactly (and
   ``metrics.jsonl`` records past that checkpoint, left by a killed run, are dropped first);
5. **reference** (DPO, KTO): the reference model's parameters, or its log-probs precomputed once and
   cached in the workdir (`elasticity.train.reference`);
6. the train step, jitted once per process for a given model structure, objective, optimizer,
   mesh and shardings (`elasticity.train.compiled`): a second run of the same shapes compiles nothing;
7. the loop: every step's metrics to ``metrics.jsonl`` and TensorBoard and to ``on_step``, a progress
   line every ``train.log_every`` steps (step, loss, tokens/s, estimated MFU, ETA), compression
   rates on named datasets every ``eval.every`` steps (`elasticity.compression.Evaluator`), a
   checkpoint every ``checkpoint.every`` steps (keeping ``checkpoint.keep``), HF snapshots at the
   steps the **snapshot plan** names (`elasticity.train.export`);
8. the export to ``<workdir>/hf`` (a Hugging Face directory with the run's tokenizer files), then
   ``DONE.json``, written last.

Stopping: the caller passes ``stop``, a callable polled after every step (any process's request
stops all of them); `elasticity.train.signals.StopOnSignal` turns SIGTERM/SIGINT into one, and
``launch/train.py`` installs it. A stop saves a checkpoint and returns ``status="preempted"`` — the
caller must not treat that run as finished. A non-finite loss raises `NonFiniteLossError` naming the
step, leaving the last good checkpoint as it was. ``export.snapshots`` names steps at which to export
the model too (``<export.snapshot_dir or the workdir>/<name>``, e.g. the θ_k of a base run).

Metrics are read one step late (the host reads step N−1's numbers while the device runs step N), and
the step itself refuses a non-finite update, so a bad batch never reaches the parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from elasticity import sharding as shd
from elasticity.train import compiled
from elasticity.train import config as config_lib
from elasticity.train import export
from elasticity.train import metrics as metrics_lib
from elasticity.train import record
from elasticity.train import reference
from elasticity.train.checkpoint import Checkpointer
from elasticity.train.export import gather_model, save_export
from elasticity.train.init import (RunData, RunModel, eval_datasets, init_or_restore, n_params,
                                   open_run, tokenizer_path)
from elasticity.train.metrics import NonFiniteLossError, StepLog, hms
from elasticity.train.ppo_loop import train_ppo
from elasticity.train.record import RunResult
from elasticity.train.step import batch_shardings, make_train_step

# The loaders `train` calls, bound here under these names so that a test can replace each one.
from elasticity.compression import Evaluator as _Evaluator
from elasticity.train.init import join_and_mesh as _join_and_mesh
from elasticity.train.init import load_data as _data
from elasticity.train.init import load_model as _load_model

__all__ = ["NonFiniteLossError", "RunResult", "gather_model", "save_export", "train"]


def _real_tokens(batch: Mapping[str, np.ndarray]) -> int:
  """Tokens the model reads in a batch: every row set (chosen/rejected, KTO's kl_ rows) included."""
  masks = [k for k in batch if k.endswith("attention_mask")]
  if masks:
    return sum(int(np.asarray(batch[k]).sum()) for k in masks)
  return int((np.asarray(batch["segment_ids"]) > 0).sum())


def _train_step(cfg, data: RunData, m: RunModel, mesh, rules, b_sh,
                ref: reference.Reference) -> Callable:
  """The jitted step, shared by every run of this process with the same key."""
  key = ("train_step", m.graphdef, data.objective, compiled.optimizer_key(cfg.optimizer, data.total_steps),
         mesh, rules, compiled.tree_key(m.shardings), compiled.tree_key(b_sh),
         int(cfg.train.num_microbatches), ref.graphdef)
  return compiled.get(key, lambda: make_train_step(
      m.graphdef, data.objective, m.tx, m.schedule, mesh, m.shardings, b_sh,
      num_microbatches=cfg.train.num_microbatches, ref_graphdef=ref.graphdef,
      ref_shardings=m.shardings["params"] if ref.graphdef is not None else None, rules=rules))


def train(cfg, workdir: str | os.PathLike, *,
          batch_transform: Callable[[int, dict], dict] | None = None,
          evaluator: Callable[[Any], Mapping[str, float]] | None = None,
          stop: Callable[[], bool] | None = None,
          on_step: Callable[[int, int, dict], None] | None = None) -> RunResult:
  """Run (or continue) the training described by ``cfg`` in ``workdir`` (see the module docstring).

  ``batch_transform(step, batch)`` may rewrite each host batch before it is placed (tests inject
  faults with it); ``evaluator(model) -> {name: value}`` replaces the compression-rate evaluation;
  ``stop()`` is polled after every step (True: checkpoint and return ``status="preempted"``);
  ``on_step(step, total_steps, metrics)`` is called with every step's metrics as they are read.
  """
  if cfg.objective.name == "ppo":   # on-policy: its own loop (rollouts, scorer, value head)
    return train_ppo(cfg, workdir, stop=stop, on_step=on_step)
  config_lib.validate(cfg)
  workdir = record.resolve_workdir(workdir)
  record.check_config(workdir, cfg)        # another run's workdir: refused before anything loads
  done = record.finished(workdir)
  if done is not None:
    return done
  os.makedirs(workdir, exist_ok=True)
  mesh, rules = _join_and_mesh(cfg)
  fingerprint = record.write_config(workdir, cfg)
  t_start = time.perf_counter()

  with contextlib.ExitStack() as stack:
    ckpt, writer = open_run(cfg, workdir, stack)

    data = _data(cfg)
    objective = data.objective
    precomputed = objective.uses_reference and cfg.objective.reference == "precomputed"
    ref = reference.Reference(
        table=reference.load(workdir, reference.fingerprint(cfg)) if precomputed else None)
    # The pretrained weights are read only if something needs them: a fresh run's initial state,
    # or a reference model that is the initial policy and has no cached table.
    needs_weights = objective.uses_reference and not cfg.reference.path and ref.table is None
    model, abstract = _load_model(cfg, tokenizer_path(cfg),
                                  weights=ckpt.latest_step() is None or needs_weights)
    m = init_or_restore(cfg, ckpt, data, mesh, rules, model, abstract)
    del model
    b_sh = batch_shardings(data.stream.example_batch(), mesh, rules)
    ref = reference.prepare(cfg, data, m, mesh, rules, workdir, ref, b_sh)
    m.host_params = None                   # the host copy is not needed any more
    train_step = _train_step(cfg, data, m, mesh, rules, b_sh, ref)

    if evaluator is None:
      evaluator = _Evaluator(eval_datasets(cfg), data.tokenizer, mesh,
                             rules=compiled.hashable(cfg.sharding.rules),
                             chunk_size=cfg.objective.chunk_size, max_length=cfg.eval.max_length,
                             batch_size=cfg.eval.batch_size)
      stack.callback(evaluator.release)
    flops = metrics_lib.train_flops_per_token(n_params(m.abstract_state["params"]),
                                              m.abstract.config.num_layers,
                                              m.abstract.config.hidden_size, cfg.data.max_length)
    log = StepLog(writer, ckpt, data.total_steps, cfg.train.log_every, flops,
                  metrics_lib.peak_flops_per_device(cfg.metrics.peak_flops), on_step)
    snapshots = export.Snapshots(cfg, data.total_steps, cfg.export.snapshot_dir or workdir,
                                 m.graphdef, data.tokenizer)
    status, step, state = _loop(cfg, data, m, mesh, rules, ckpt, writer, log, train_step, ref,
                                snapshots, evaluator, batch_transform, stop)

  export_dir = None
  if status == "completed" and cfg.export.hf:
    export_dir = save_export(snapshots.final_model(state["params"]), os.path.join(workdir, "hf"),
                             dtype=cfg.export.dtype or None, tokenizer=data.tokenizer)
  elapsed = time.perf_counter() - t_start
  logging.info("%s: %d steps (%d this run) in %s", status, step, step - m.start_step, hms(elapsed))
  result = RunResult(status, step, data.total_steps, workdir, export_dir, log.last)
  if status == "completed":
    record.write_done(workdir, {**dataclasses.asdict(result), "fingerprint": fingerprint})
  return result


def _loop(cfg, data: RunData, m: RunModel, mesh, rules, ckpt: Checkpointer, writer, log: StepLog,
          train_step: Callable, ref: reference.Reference, snapshots: export.Snapshots, evaluate,
          batch_transform, stop) -> tuple[str, int, Any]:
  """The steps from the state's step to the end (or a stop): ``(status, step, state)``. Saves the
  final checkpoint and the planned snapshots."""
  state, stream, total_steps = m.state, data.stream, data.total_steps
  m.state = None                             # donated by the first step: hold no stale reference
  tokens_seen = m.tokens_seen
  step = int(jax.device_get(state["step"]))
  m.start_step = step
  pending: tuple[int, Any, int] | None = None

  def meta() -> dict[str, Any]:
    return {"tokens_seen": tokens_seen, "total_steps": total_steps, "objective": data.objective.name,
            "model": cfg.model.path or cfg.model.random_init, "mesh": dict(mesh.shape)}

  status = "completed"
  snapshots.on_resume(step, state["params"])   # one a killed run did not write
  while step < total_steps:
    host = next(stream)
    if ref.table is not None:
      host = reference.attach(host, ref.table)
    host = dict(host)
    host.pop("example_id", None)
    if batch_transform is not None:
      host = batch_transform(step + 1, host)
    batch = shd.global_batch(host, mesh, rules)
    if ref.params is not None:
      state, metrics = train_step(state, batch, ref.params)
    else:
      state, metrics = train_step(state, batch)
    step += 1
    ntok = _real_tokens(host)
    tokens_seen += ntok
    if pending is not None:
      log(pending)
    pending = (step, metrics, ntok)
    preempt = _agree(bool(stop()) if stop is not None else False) or ckpt.reached_preemption(step)
    eval_due = cfg.eval.every > 0 and step % cfg.eval.every == 0
    if ckpt.should_save(step) or step == total_steps or preempt or eval_due:
      log(pending)
      pending = None
    if eval_due:
      _run_eval(evaluate, m.graphdef, state, step, writer)
    if ckpt.should_save(step, total_steps) or preempt:
      ckpt.save(step, state, stream.state(), meta(), wait=preempt)
    snapshots.after_step(step, state["params"])
    if preempt:
      status = "preempted"
      logging.warning("stopped at step %d on request; checkpoint saved in %s", step, ckpt.directory)
      break
  if pending is not None:
    log(pending)
  if status == "completed" and ckpt.at_end:
    ckpt.save(step, state, stream.state(), meta(), wait=True)
  ckpt.wait()
  return status, step, state


def _run_eval(evaluate, graphdef, state, step: int, writer) -> None:
  model = nnx.merge(graphdef, state["params"])
  t0 = time.perf_counter()
  res = dict(evaluate(model))
  if res:
    writer.write(step, res, kind="eval")
    logging.info("eval at step %d (%.1fs): %s", step, time.perf_counter() - t0,
                 "  ".join(f"{k} {v:.4f}" for k, v in res.items()))


def _agree(flag: bool) -> bool:
  """Any process's flag, on every process (a no-op with one process)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))
