"""The training loop: from a validated config and a work directory to a trained, exported model.

    from elasticity.train.loop import train
    result = train(config, workdir)       # configs/sft.py:tiny → <workdir>/{checkpoints,hf,metrics.jsonl}

What it does, in order: joins the other processes (`jax.distributed`), builds the mesh, loads the
tokenizer, the data and the model on the host, creates the sharded train state (or restores the
latest checkpoint — state, data position and RNG — so a restarted run continues exactly), jits the
step once, then loops: a progress line every ``train.log_every`` steps (step, loss, tokens/s,
estimated MFU, ETA), every step's metrics to ``metrics.jsonl`` and TensorBoard, compression rates on
named datasets every ``eval.every`` steps, a checkpoint every ``checkpoint.every`` steps (keeping
``checkpoint.keep``). SIGTERM/SIGINT (a TPU preemption notice, Ctrl-C, SLURM's time limit) saves a
checkpoint and returns ``status="preempted"``; a non-finite loss raises `NonFiniteLossError` naming the
step, leaving the last good checkpoint as it was. At the end the model is exported to
``<workdir>/hf`` (a Hugging Face directory, with the run's tokenizer files); ``export.snapshots``
names steps at which to export one too (``<export.snapshot_dir>/<name>``, e.g. the θ_k of a base run).

Metrics are read one step late (the host reads step N−1's numbers while the device runs step N), and
the step itself refuses a non-finite update, so a bad batch never reaches the parameters.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from elasticity import sharding as shd
from elasticity.train import config as config_lib
from elasticity.train import metrics as metrics_lib
from elasticity.train import reference
from elasticity.train.checkpoint import Checkpointer
from elasticity.train.data import BatchStream, load_examples, select
from elasticity.train.losses import objective_from_config
from elasticity.train.optimizer import make_optimizer
from elasticity.train.step import (batch_shardings, init_train_state, make_train_step, split_params,
                                   state_shardings, with_shardings)

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class NonFiniteLossError(FloatingPointError):
  """The loss (or gradient norm) of a step was NaN or infinite; the run stopped at that step."""

  def __init__(self, step: int, loss: float, grad_norm: float, last_checkpoint: int | None,
               directory: str):
    self.step, self.last_checkpoint = step, last_checkpoint
    where = (f"the last good checkpoint is step {last_checkpoint} in {directory}"
             if last_checkpoint is not None else f"no checkpoint was written yet in {directory}")
    super().__init__(f"step {step}: non-finite loss {loss} (grad norm {grad_norm}); the update was "
                     f"not applied and the run stopped; {where}")


@dataclasses.dataclass
class RunResult:
  status: str                  # "completed" | "preempted"
  step: int                    # optimizer steps done
  total_steps: int
  workdir: str
  export_dir: str | None = None
  last: dict[str, float] = dataclasses.field(default_factory=dict)


class _Stop:
  """SIGTERM/SIGINT → a flag the loop polls after each step (handlers restored on exit)."""

  def __init__(self):
    self.requested = False
    self._old: dict[int, Any] = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._old[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning("received signal %d: saving a checkpoint after this step, then exiting", signum)
    self.requested = True

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _on_host():
  """A context placing new arrays in host memory (the CPU backend), if JAX has one here."""
  import contextlib
  try:
    return jax.default_device(jax.local_devices(backend="cpu")[0])
  except RuntimeError:   # e.g. JAX_PLATFORMS=tpu: no CPU backend
    logging.warning("no CPU backend: the checkpoint is read onto the default device")
    return contextlib.nullcontext()


def _load_model(cfg, tokenizer_path: str | None, weights: bool = True):
  """(model on the host, its abstract twin) with compute/param dtypes and the remat policy.

  ``weights=False`` reads only the checkpoint's config (the model is None): a resumed run takes its
  parameters from the train-state checkpoint.
  """
  from elasticity.models import abstract_model, load_config, load_pretrained
  dtype, pdtype = _DTYPES[cfg.model.dtype], _DTYPES[cfg.model.param_dtype]
  remat = None if cfg.model.remat == "none" else cfg.model.remat
  if cfg.model.random_init:
    from elasticity.models.presets import preset_config
    mcfg = preset_config(cfg.model.random_init)
    model = None
  elif not weights:
    mcfg = load_config(cfg.model.path)
    model = None
  else:
    with _on_host():   # host memory: never one accelerator holding the whole model
      model = load_pretrained(cfg.model.path, dtype=dtype, param_dtype=pdtype,
                              tokenizer=tokenizer_path)
    mcfg = model.config
    model.remat = remat
  abstract = abstract_model(mcfg, dtype=dtype, param_dtype=pdtype)
  abstract.remat = remat
  return model, abstract


def _tokenizer_path(cfg) -> str:
  return cfg.model.tokenizer or cfg.model.path


def _n_params(abstract_params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_params)))


def _real_tokens(batch: Mapping[str, np.ndarray]) -> int:
  """Tokens the model reads in a batch: every row set (chosen/rejected, KTO's kl_ rows) included."""
  masks = [k for k in batch if k.endswith("attention_mask")]
  if masks:
    return sum(int(np.asarray(batch[k]).sum()) for k in masks)
  return int((np.asarray(batch["segment_ids"]) > 0).sum())


def _data_kind(objective_name: str) -> str:
  """The batch kind an objective trains on (`elasticity.train.data.KINDS`)."""
  return {"sft": "sft", "kto": "unpaired"}.get(objective_name, "preference")


def _log_kto_balance(examples, objective) -> None:
  """Log the desirable/undesirable counts; warn when λ_D·n_D / (λ_U·n_U) is outside [1, 4/3].

  The KTO paper (Ethayarajh et al. 2024) recommends that range for the weighted class balance.
  """
  n_d, n_u = examples.n_desirable, examples.n_undesirable
  lam_d, lam_u = objective.desirable_weight, objective.undesirable_weight
  ratio = lam_d * n_d / (lam_u * n_u) if lam_u * n_u > 0 else float("inf")
  logging.info("KTO data: %d desirable, %d undesirable; λ_D·n_D / (λ_U·n_U) = %.3f", n_d, n_u, ratio)
  if not 1.0 <= ratio <= 4.0 / 3.0:
    logging.warning("KTO data: λ_D·n_D / (λ_U·n_U) = %.3f (λ_D=%g, n_D=%d, λ_U=%g, n_U=%d) is outside "
                    "[1, 4/3], the range the KTO paper recommends; adjust "
                    "objective.desirable_weight / undesirable_weight", ratio, lam_d, n_d, lam_u, n_u)


class _Evaluator:
  """Compression rates of the current model on the configured datasets (the elasticity signal).

  Uses `elasticity.compression.measure` (bits/token, bits/byte, normalized γ).
  """

  def __init__(self, cfg, tokenizer, mesh):
    self.datasets = {}
    if cfg.eval.every <= 0 or not cfg.eval.datasets:
      return
    from elasticity import data
    for name, ds in cfg.eval.datasets.items():
      records = data.load_dataset(ds.name, ds.get("split") or None, **dict(ds.get("load_kwargs") or {}))
      self.datasets[name] = (select(records, ds), ds.get("template", "plain"))
    self.cfg, self.tokenizer, self.mesh = cfg, tokenizer, mesh
    self.scorer = None

  def __call__(self, model) -> dict[str, float]:
    if not self.datasets:
      return {}
    try:
      from elasticity import compression
    except ImportError as e:
      logging.log_first_n(logging.WARNING, "eval skipped: elasticity.compression unavailable (%s)", 1, e)
      return {}
    if self.scorer is None:
      # The training rules, so the scorer's parameter shardings equal the train state's and
      # `update` places nothing (no second copy of the model).
      rules = tuple(tuple(r) for r in self.cfg.sharding.rules)
      self.scorer = compression.Scorer(model, mesh=self.mesh, rules=rules,
                                       chunk_size=self.cfg.objective.chunk_size)
    else:
      self.scorer.update(model)
    out = {}
    for name, (records, template) in self.datasets.items():
      rep = compression.measure(self.scorer, self.tokenizer, records, max_length=self.cfg.eval.max_length,
                                batch_size=self.cfg.eval.batch_size, template=template, name=name)
      out[f"{name}/bits_per_token"] = rep.bits_per_token
      out[f"{name}/bits_per_byte"] = rep.bits_per_byte
      out[f"{name}/normalized"] = rep.normalized
    return out


def train(cfg, workdir: str | os.PathLike, *,
          batch_transform: Callable[[int, dict], dict] | None = None,
          evaluator: Callable[[Any], Mapping[str, float]] | None = None) -> RunResult:
  """Run (or continue) the training described by ``cfg`` in ``workdir``.

  ``batch_transform(step, batch)`` may rewrite each host batch before it is placed (tests inject
  faults with it); ``evaluator(model) -> {name: value}`` replaces the compression-rate evaluation.
  """
  jax.config.update("jax_threefry_partitionable", True)
  config_lib.validate(cfg)
  if "://" in os.fspath(workdir):
    raise ValueError(f"workdir {os.fspath(workdir)!r}: a URL; the workdir must be a file-system path "
                     "all processes see (mount the bucket, e.g. with gcsfuse, or use NFS/Filestore)")
  workdir = os.path.abspath(os.fspath(workdir))
  os.makedirs(workdir, exist_ok=True)
  d = cfg.distributed
  shd.initialize_distributed(d.coordinator_address or None, d.num_processes or None,
                             d.process_id if d.process_id >= 0 else None)
  mesh = shd.mesh_from_config(cfg.mesh)
  rules = tuple(tuple(r) for r in cfg.sharding.rules)
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count())
  if cfg.train.global_batch_size % (shd.batch_divisor(mesh, rules) * cfg.train.num_microbatches):
    raise ValueError(f"config.train.global_batch_size={cfg.train.global_batch_size} is not a multiple "
                     f"of num_microbatches ({cfg.train.num_microbatches}) × batch shards "
                     f"({shd.batch_divisor(mesh, rules)})")

  from elasticity.tokenizers import load_tokenizer
  tokenizer = load_tokenizer(_tokenizer_path(cfg))
  objective = objective_from_config(cfg.objective)
  kind = _data_kind(objective.name)
  examples = load_examples(cfg.data, tokenizer, kind)
  logging.info("data: %s", examples.report)
  if kind == "unpaired":
    _log_kto_balance(examples, objective)
  stream = BatchStream(examples, batch_size=cfg.train.global_batch_size, max_length=cfg.data.max_length,
                       kind=kind, pack=cfg.data.pack, pad_id=tokenizer.pad_id, seed=cfg.seed,
                       shuffle=cfg.data.shuffle, drop_last=cfg.data.drop_last)
  total_steps = cfg.train.num_steps or cfg.train.num_epochs * stream.batches_per_epoch

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), every=cfg.checkpoint.every,
                      keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
  resuming = ckpt.latest_step() is not None
  precomputed = objective.uses_reference and cfg.objective.reference == "precomputed"
  ref_fp = reference.fingerprint(cfg)
  ref_table = reference.load(workdir, ref_fp) if precomputed else None
  # The pretrained weights are read only if something needs them: a fresh run's initial state, or
  # a reference model that is the initial policy and has no cached table.
  needs_initial_ref = objective.uses_reference and not cfg.reference.path and ref_table is None
  model, abstract = _load_model(cfg, _tokenizer_path(cfg),
                                weights=not resuming or needs_initial_ref)
  graphdef, _ = split_params(abstract)
  tx, schedule = make_optimizer(cfg.optimizer, total_steps)
  abstract_state, shardings = state_shardings(abstract, tx, mesh, rules)
  host_params = split_params(model)[1] if model is not None else None
  tokens_seen = 0
  if resuming:
    step, state, data_state, meta = ckpt.restore(with_shardings(abstract_state, shardings))
    stream.restore(data_state)
    tokens_seen = int(meta.get("tokens_seen", 0))
    logging.info("resumed at step %d (data position %s)", step, data_state)
  else:
    if host_params is not None:
      init = host_params
    else:
      from elasticity.models import create_model
      from elasticity.models.presets import preset_config
      mcfg = preset_config(cfg.model.random_init)
      init = lambda: split_params(create_model(mcfg, dtype=_DTYPES[cfg.model.dtype],
                                               param_dtype=_DTYPES[cfg.model.param_dtype],
                                               seed=cfg.seed))[1]
    state = init_train_state(init, tx, shardings, cfg.seed)

  # Reference model (DPO, KTO): the initial policy unless reference.path says otherwise; not needed
  # at all when its log-probs are precomputed and cached (`elasticity.train.reference`).
  ref_params = ref_graphdef = None
  if objective.uses_reference and ref_table is None:
    if cfg.reference.path:
      with _on_host():
        from elasticity.models import load_pretrained
        ref_model = load_pretrained(cfg.reference.path, dtype=_DTYPES[cfg.model.dtype],
                                    param_dtype=_DTYPES[cfg.model.param_dtype],
                                    tokenizer=_tokenizer_path(cfg))
      ref_host = split_params(ref_model)[1]
    else:
      if host_params is None:
        raise ValueError("config.reference.path: required with model.random_init")
      ref_host = host_params
    ref_graphdef = graphdef
    ref_params = shd.host_to_global(ref_host, shardings["params"])
  first = {k: v for k, v in stream._epoch_batches(stream.epoch)[0].items() if k != "example_id"}
  b_sh = batch_shardings(first, mesh, rules)
  if precomputed and ref_table is None:
    ref_table = reference.precompute(objective, ref_graphdef, ref_params, examples, cfg, tokenizer,
                                     mesh, shardings["params"], rules, kind)
    reference.save(workdir, ref_table, ref_fp)
  if precomputed:
    ref_params = ref_graphdef = None
    b_sh.update({k: shd.batch_sharding(mesh, 1, rules) for k in reference.keys(ref_table)})

  train_step = make_train_step(graphdef, objective, tx, schedule, mesh, shardings, b_sh,
                               num_microbatches=cfg.train.num_microbatches,
                               ref_graphdef=ref_graphdef, ref_shardings=shardings["params"]
                               if ref_graphdef is not None else None, rules=rules)

  writer = metrics_lib.MetricWriter(workdir, tensorboard=cfg.metrics.tensorboard)
  evaluate = evaluator if evaluator is not None else _Evaluator(cfg, tokenizer, mesh)
  seq_len = cfg.data.max_length
  n_params = _n_params(abstract_state["params"])
  flops_per_token = metrics_lib.train_flops_per_token(n_params, abstract.config.num_layers,
                                                      abstract.config.hidden_size, seq_len)
  peak = metrics_lib.peak_flops_per_device(cfg.metrics.peak_flops)
  step = int(jax.device_get(state["step"]))
  start_step = step
  last: dict[str, float] = {}
  window = {"t": time.perf_counter(), "tokens": 0, "steps": 0}
  t_start = time.perf_counter()
  pending: tuple[int, Any, int] | None = None

  def meta() -> dict[str, Any]:
    return {"tokens_seen": tokens_seen, "total_steps": total_steps, "objective": objective.name,
            "model": cfg.model.path or cfg.model.random_init, "mesh": dict(mesh.shape)}

  def consume(entry) -> None:
    nonlocal last
    s, m, ntok = entry
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    if not m.pop("finite"):
      ckpt.wait()
      writer.write(s, m)
      raise NonFiniteLossError(s, m["loss"], m["grad_norm"], ckpt.latest_step(), ckpt.directory)
    writer.write(s, {**m, "tokens": ntok})
    last = m
    window["tokens"] += ntok
    window["steps"] += 1
    if s % cfg.train.log_every == 0 or s == total_steps:
      now = time.perf_counter()
      dt = max(now - window["t"], 1e-9)
      tps = window["tokens"] / dt
      step_time = dt / max(window["steps"], 1)
      mfu = (flops_per_token * tps / (peak * jax.device_count())) if peak else None
      eta = (total_steps - s) * step_time
      logging.info("step %d/%d  loss %.4f  tokens/s %.0f  MFU %s  ETA %s", s, total_steps, m["loss"],
                   tps, f"{100 * mfu:.1f}%" if mfu is not None else "n/a", _hms(eta))
      writer.write(s, {"tokens_per_s": tps, "step_time_s": step_time,
                       **({"mfu": mfu} if mfu is not None else {})}, kind="perf")
      window.update(t=now, tokens=0, steps=0)

  snapshots: dict[int, list[str]] = {}
  for name, at in config_lib.parse_snapshots(cfg.export.snapshots).items():
    if at > total_steps:
      logging.warning("config.export.snapshots.%s: step %d is past the run's %d steps; not written",
                      name, at, total_steps)
    snapshots.setdefault(int(at), []).append(name)
  snapshot_dir = cfg.export.snapshot_dir or workdir

  final_gather: list[Any] = []   # [model] once the last step's parameters are on the host
  status = "completed"
  try:
    with _Stop() as stop:
      while step < total_steps:
        host = next(stream)
        if ref_table is not None:
          host = reference.attach(host, ref_table)
        host = dict(host)
        host.pop("example_id", None)
        if batch_transform is not None:
          host = batch_transform(step + 1, host)
        batch = shd.global_batch(host, mesh, rules)
        if ref_params is not None:
          state, m = train_step(state, batch, ref_params)
        else:
          state, m = train_step(state, batch)
        step += 1
        ntok = _real_tokens(host)
        tokens_seen += ntok
        if pending is not None:
          consume(pending)
        pending = (step, m, ntok)
        preempt = _agree(stop.requested) or ckpt.reached_preemption(step)
        eval_due = cfg.eval.every > 0 and step % cfg.eval.every == 0
        if ckpt.should_save(step) or step == total_steps or preempt or eval_due:
          consume(pending)
          pending = None
        if eval_due:
          _run_eval(evaluate, graphdef, state, step, writer)
        if ckpt.should_save(step) or preempt:
          ckpt.save(step, state, stream.state(), meta(), wait=preempt)
        if step in snapshots:
          host_model = gather_model(graphdef, state["params"])
          for name in snapshots[step]:
            out = save_export(host_model, os.path.join(snapshot_dir, name),
                              dtype=cfg.export.dtype or None, tokenizer=tokenizer)
            logging.info("step %d: snapshot %r exported to %s", step, name, out)
          if step == total_steps:   # a base run's θ3: the final export reuses this gather
            final_gather = [host_model]
        if preempt:
          status = "preempted"
          logging.warning("stopped at step %d on a signal; checkpoint saved in %s", step, ckpt.directory)
          break
      if pending is not None:
        consume(pending)
        pending = None
    if status == "completed":
      ckpt.save(step, state, stream.state(), meta(), wait=True)
    ckpt.wait()
  finally:
    writer.close()
    ckpt.close()

  export_dir = None
  if status == "completed" and cfg.export.hf:
    host_model = final_gather[0] if final_gather else gather_model(graphdef, state["params"])
    export_dir = save_export(host_model, os.path.join(workdir, "hf"), dtype=cfg.export.dtype or None,
                             tokenizer=tokenizer)
  elapsed = time.perf_counter() - t_start
  logging.info("%s: %d steps (%d this run) in %s", status, step, step - start_step, _hms(elapsed))
  return RunResult(status, step, total_steps, workdir, export_dir, last)


def gather_model(graphdef, params):
  """The model with its parameters gathered to the host: a collective, so every process calls it;
  process 0 gets the model, the others None."""
  from flax import nnx
  host = shd.gather_to_host(params)
  if jax.process_index() != 0:
    return None
  model = nnx.merge(graphdef, jax.tree.map(np.asarray, host))
  model.remat = None
  return model


def save_export(model, out_dir: str, dtype: str | None = None, tokenizer=None) -> str | None:
  """Write ``model`` (from `gather_model`; None off process 0, which writes nothing) as a Hugging
  Face directory, with the run's tokenizer files when ``tokenizer`` is given."""
  if model is None:
    return None
  from elasticity.models import save_pretrained
  return os.fspath(save_pretrained(model, out_dir, dtype=dtype, tokenizer=tokenizer))


def _run_eval(evaluate, graphdef, state, step: int, writer) -> None:
  from flax import nnx
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
  from jax.experimental import multihost_utils
  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def _hms(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
