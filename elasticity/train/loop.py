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
3. **data**: tokenizer, examples, the resumable batch stream and the run's length;
4. **init or restore**: the sharded train state from the pretrained (or random) weights, or the
   latest checkpoint — state, data position and RNG — so a restarted run continues exactly (and
   ``metrics.jsonl`` records past that checkpoint, left by a killed run, are dropped first);
5. **reference** (DPO, KTO): the reference model's parameters, or its log-probs precomputed once and
   cached in the workdir;
6. the train step, jitted once per process for a given model structure, objective, optimizer,
   mesh and shardings (`elasticity.train.compiled`): a second run of the same shapes compiles nothing;
7. the loop: every step's metrics to ``metrics.jsonl`` and TensorBoard and to ``on_step``, a progress
   line every ``train.log_every`` steps (step, loss, tokens/s, estimated MFU, ETA), compression
   rates on named datasets every ``eval.every`` steps, a checkpoint every ``checkpoint.every`` steps
   (keeping ``checkpoint.keep``), HF snapshots at the steps the **snapshot plan** names;
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
import jax.numpy as jnp
import numpy as np
from absl import logging

from elasticity import atomic
from elasticity import sharding as shd
from elasticity.train import compiled
from elasticity.train import config as config_lib
from elasticity.train import metrics as metrics_lib
from elasticity.train import record
from elasticity.train import reference
from elasticity.train.checkpoint import Checkpointer
from elasticity.train.data import BatchStream, load_examples, select
from elasticity.train.losses import Objective, objective_from_config
from elasticity.train.optimizer import make_optimizer
from elasticity.train.step import (batch_shardings, init_train_state, make_opt_init, make_train_step,
                                   split_params, state_shardings, with_shardings)


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
  """What `train` returns, and what ``DONE.json`` stores for a completed run."""
  status: str                  # "completed" | "preempted"
  step: int                    # optimizer steps done
  total_steps: int
  workdir: str
  export_dir: str | None = None
  last: dict[str, float] = dataclasses.field(default_factory=dict)


def _on_host():
  """A context placing new arrays in host memory (the CPU backend), if JAX has one here."""
  try:
    return jax.default_device(jax.local_devices(backend="cpu")[0])
  except RuntimeError:   # e.g. JAX_PLATFORMS=tpu: no CPU backend
    logging.warning("no CPU backend: the checkpoint is read onto the default device")
    return contextlib.nullcontext()


def _dtypes(cfg) -> tuple[jnp.dtype, jnp.dtype]:
  """(compute dtype, parameter dtype) of ``config.model``."""
  return jnp.dtype(cfg.model.dtype), jnp.dtype(cfg.model.param_dtype)


def _load_model(cfg, tokenizer_path: str | None, weights: bool = True):
  """(model on the host, its abstract twin) with compute/param dtypes and the remat policy.

  ``weights=False`` reads only the checkpoint's config (the model is None): a resumed run takes its
  parameters from the train-state checkpoint.
  """
  from elasticity.convert import load_config, load_pretrained
  from elasticity.models import abstract_model
  from elasticity.models.scan import to_layout
  dtype, pdtype = _dtypes(cfg)
  remat = None if cfg.model.remat == "none" else cfg.model.remat
  scan, impl = bool(cfg.model.scan_layers), cfg.model.attention_impl
  if cfg.model.random_init:
    from elasticity.models.presets import preset_config
    mcfg = preset_config(cfg.model.random_init)
    model = None
  elif not weights:
    mcfg = load_config(cfg.model.path)
    model = None
  else:
    with _on_host():   # host memory: never one accelerator holding the whole model
      model = to_layout(load_pretrained(cfg.model.path, dtype=dtype, param_dtype=pdtype,
                                        tokenizer=tokenizer_path), scan)
    model.set_attention_impl(impl)
    mcfg = model.config
    model.remat = remat
  abstract = abstract_model(mcfg, dtype=dtype, param_dtype=pdtype, scan_layers=scan,
                            attention_impl=impl)
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

  Uses `elasticity.compression.measure` (bits/token, bits/byte, normalized γ). The scorer (and so
  its compiled functions) is shared by every run with the same model structure, mesh and rules.
  """

  def __init__(self, cfg, tokenizer, mesh):
    self.datasets = {}
    self.scorer = None
    if cfg.eval.every <= 0 or not cfg.eval.datasets:
      return
    from elasticity import data
    for name, ds in cfg.eval.datasets.items():
      records = data.load_dataset(ds.name, ds.get("split") or None, **dict(ds.get("load_kwargs") or {}))
      self.datasets[name] = (select(records, ds), ds.get("template", "plain"))
    self.cfg, self.tokenizer, self.mesh = cfg, tokenizer, mesh

  def __call__(self, model) -> dict[str, float]:
    if not self.datasets:
      return {}
    from elasticity import compression
    # The training rules, so the scorer's parameter shardings equal the train state's and
    # `update` places nothing (no second copy of the model).
    rules = compiled.hashable(self.cfg.sharding.rules)
    chunk = self.cfg.objective.chunk_size
    graphdef, _ = split_params(model)
    self.scorer = compiled.get(
        ("scorer", graphdef, self.mesh, rules, chunk),
        lambda: compression.Scorer(model, mesh=self.mesh, rules=rules, chunk_size=chunk))
    self.scorer.update(model)
    out = {}
    for name, (records, template) in self.datasets.items():
      rep = compression.measure(self.scorer, self.tokenizer, records, max_length=self.cfg.eval.max_length,
                                batch_size=self.cfg.eval.batch_size, template=template, name=name)
      out[f"{name}/bits_per_token"] = rep.bits_per_token
      out[f"{name}/bits_per_byte"] = rep.bits_per_byte
      out[f"{name}/normalized"] = rep.normalized
    return out

  def release(self) -> None:
    """Drop the scorer's hold on this run's parameters (the cached scorer outlives the run)."""
    if self.scorer is not None:
      self.scorer.params = None
      self.scorer = None


# --------------------------------------------------------------------------------------------------
# The steps of a run
# --------------------------------------------------------------------------------------------------


def _workdir(workdir: str | os.PathLike) -> str:
  if "://" in os.fspath(workdir):
    raise ValueError(f"workdir {os.fspath(workdir)!r}: a URL; the workdir must be a file-system path "
                     "all processes see (mount the bucket, e.g. with gcsfuse, or use NFS/Filestore)")
  return os.path.abspath(os.fspath(workdir))


def _finished(workdir: str) -> RunResult | None:
  """The stored result of a completed run in ``workdir`` (paths rebased if the folder moved)."""
  fields = record.read_done(workdir)
  if fields is None:
    return None
  names = {f.name for f in dataclasses.fields(RunResult)}
  missing = sorted(n for n in ("status", "step", "total_steps", "workdir") if n not in fields)
  if missing:
    raise ValueError(f"{os.path.join(workdir, record.DONE_FILE)}: missing field(s) {missing}")
  result = RunResult(**{k: v for k, v in fields.items() if k in names})
  old = result.workdir
  if old != workdir:
    if result.export_dir and os.path.commonpath([old, result.export_dir]) == old:
      result.export_dir = os.path.join(workdir, os.path.relpath(result.export_dir, old))
    result.workdir = workdir
  logging.info("%s: completed before (%d steps); not trained or exported again", workdir, result.step)
  return result


def _trim_metrics(workdir: str, step: int) -> None:
  """Keep only the ``metrics.jsonl`` records of steps <= ``step`` (the checkpoint a run resumes
  from; 0 for a fresh start), rewritten atomically (process 0).

  A run killed after its last checkpoint logged steps it will run again, and may have left half a
  line; without this the resumed log would hold them twice. The log then equals an uninterrupted
  run's.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  import json
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


def _join_and_mesh(cfg) -> tuple[Any, tuple]:
  """Join the other processes, build the mesh, check the batch fits it; ``(mesh, rules)``."""
  d = cfg.distributed
  shd.initialize_distributed(d.coordinator_address or None, d.num_processes or None,
                             d.process_id if d.process_id >= 0 else None)
  mesh = shd.mesh_from_config(cfg.mesh)
  from elasticity.models.scan import with_layers_rule
  rules = compiled.hashable(with_layers_rule(cfg.sharding.rules))
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count())
  if cfg.train.global_batch_size % (shd.batch_divisor(mesh, rules) * cfg.train.num_microbatches):
    raise ValueError(f"config.train.global_batch_size={cfg.train.global_batch_size} is not a multiple "
                     f"of num_microbatches ({cfg.train.num_microbatches}) × batch shards "
                     f"({shd.batch_divisor(mesh, rules)})")
  return mesh, rules


@dataclasses.dataclass
class _Data:
  tokenizer: Any
  objective: Objective
  kind: str
  examples: Any
  stream: BatchStream
  total_steps: int


def _data(cfg) -> _Data:
  """Tokenizer, objective, examples and the batch stream; the run's length in optimizer steps."""
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
  return _Data(tokenizer, objective, kind, examples, stream, total_steps)


@dataclasses.dataclass
class _Model:
  graphdef: Any
  abstract: Any                # the abstract model (config, structure)
  abstract_state: Any
  shardings: Any
  tx: Any
  schedule: Callable
  state: Any
  host_params: Any             # the pretrained weights on the host, if they were read
  tokens_seen: int
  start_step: int = 0          # the step this call started from (0, or the restored checkpoint's)


def _random_init(cfg, shardings) -> Callable[[], Any]:
  """The jitted random initialiser of ``model.random_init`` (cached per preset, dtypes and seed)."""
  from elasticity.models import create_model
  from elasticity.models.presets import preset_config
  mcfg = preset_config(cfg.model.random_init)
  dtype, pdtype = _dtypes(cfg)
  seed = int(cfg.seed)

  scan, impl = bool(cfg.model.scan_layers), cfg.model.attention_impl

  def build():
    return jax.jit(lambda: split_params(create_model(mcfg, dtype=dtype, param_dtype=pdtype,
                                                     seed=seed, scan_layers=scan,
                                                     attention_impl=impl))[1],
                   out_shardings=shardings["params"])
  return compiled.get(("random_init", cfg.model.random_init, dtype, pdtype, seed, scan, impl,
                       compiled.tree_key(shardings["params"])), build)


def _init_or_restore(cfg, ckpt: Checkpointer, data: _Data, mesh, rules, needs_weights: bool) -> _Model:
  """The sharded train state: restored from the latest checkpoint, or created from the weights.

  The pretrained weights are read only if something needs them: a fresh run's initial state, or
  (``needs_weights``) a reference model that is the initial policy and has no cached table.
  """
  resuming = ckpt.latest_step() is not None
  model, abstract = _load_model(cfg, _tokenizer_path(cfg), weights=not resuming or needs_weights)
  graphdef, _ = split_params(abstract)
  tx, schedule = make_optimizer(cfg.optimizer, data.total_steps)
  abstract_state, shardings = state_shardings(abstract, tx, mesh, rules)
  host_params = split_params(model)[1] if model is not None else None
  tokens_seen = 0
  if resuming:
    step, state, data_state, meta = ckpt.restore(with_shardings(abstract_state, shardings))
    data.stream.restore(data_state)
    tokens_seen = int(meta.get("tokens_seen", 0))
    logging.info("resumed at step %d (data position %s)", step, data_state)
  else:
    opt_key = compiled.optimizer_key(cfg.optimizer, data.total_steps)
    opt_init = compiled.get(("opt_init", opt_key, compiled.tree_key(shardings["opt_state"])),
                            lambda: make_opt_init(tx, shardings))
    init = host_params if host_params is not None else _random_init(cfg, shardings)()
    state = init_train_state(init, tx, shardings, cfg.seed, opt_init=opt_init)
  return _Model(graphdef, abstract, abstract_state, shardings, tx, schedule, state, host_params,
                tokens_seen)


@dataclasses.dataclass
class _Reference:
  table: reference.Table | None = None   # precomputed log-probs (then no reference model)
  graphdef: Any = None
  params: Any = None


def _reference(cfg, data: _Data, m: _Model, mesh, rules, workdir: str, ref: _Reference,
               b_sh: dict) -> _Reference:
  """The reference model (DPO, KTO): the initial policy unless ``reference.path`` says otherwise;
  not needed at all when its log-probs are precomputed and cached (`elasticity.train.reference`).

  ``ref`` holds the cached table, if `reference.load` found one; ``b_sh`` (the batch shardings) gets
  the precomputed fields' shardings.
  """
  objective = data.objective
  precomputed = objective.uses_reference and cfg.objective.reference == "precomputed"
  if objective.uses_reference and ref.table is None:
    if cfg.reference.path:
      from elasticity.convert import load_pretrained
      dtype, pdtype = _dtypes(cfg)
      with _on_host():
        from elasticity.models.scan import to_layout
        ref_model = to_layout(load_pretrained(cfg.reference.path, dtype=dtype, param_dtype=pdtype,
                                              tokenizer=_tokenizer_path(cfg)),
                              bool(cfg.model.scan_layers))
      ref_host = split_params(ref_model)[1]
    else:
      if m.host_params is None:
        raise ValueError("config.reference.path: required with model.random_init")
      ref_host = m.host_params
    ref.graphdef = m.graphdef
    ref.params = shd.host_to_global(ref_host, m.shardings["params"])
  if precomputed and ref.table is None:
    ref.table = reference.precompute(objective, ref.graphdef, ref.params, data.examples, cfg,
                                     data.tokenizer, mesh, m.shardings["params"], rules, data.kind)
    reference.save(workdir, ref.table, reference.fingerprint(cfg))
  if precomputed:
    ref.params = ref.graphdef = None
    b_sh.update({k: shd.batch_sharding(mesh, 1, rules) for k in reference.keys(ref.table)})
  return ref


def _train_step(cfg, data: _Data, m: _Model, mesh, rules, b_sh, ref: _Reference) -> Callable:
  """The jitted step, shared by every run of this process with the same key."""
  key = ("train_step", m.graphdef, data.objective, compiled.optimizer_key(cfg.optimizer, data.total_steps),
         mesh, rules, compiled.tree_key(m.shardings), compiled.tree_key(b_sh),
         int(cfg.train.num_microbatches), ref.graphdef)
  return compiled.get(key, lambda: make_train_step(
      m.graphdef, data.objective, m.tx, m.schedule, mesh, m.shardings, b_sh,
      num_microbatches=cfg.train.num_microbatches, ref_graphdef=ref.graphdef,
      ref_shardings=m.shardings["params"] if ref.graphdef is not None else None, rules=rules))


def _snapshot_plan(cfg, total_steps: int) -> dict[int, list[str]]:
  """``{step: [snapshot names]}`` from ``export.snapshots``; steps past the run are dropped (warned)."""
  snapshots: dict[int, list[str]] = {}
  for name, at in config_lib.parse_snapshots(cfg.export.snapshots).items():
    if at > total_steps:
      logging.warning("config.export.snapshots.%s: step %d is past the run's %d steps; not written",
                      name, at, total_steps)
      continue
    snapshots.setdefault(int(at), []).append(name)
  return snapshots


class _StepLog:
  """Consumes each step's metrics: ``metrics.jsonl``/TensorBoard, the progress line, ``on_step``.

  A non-finite step raises `NonFiniteLossError` (after the checkpointer has finished writing).
  """

  def __init__(self, writer, ckpt: Checkpointer, total_steps: int, log_every: int,
               flops_per_token: float, peak: float | None,
               on_step: Callable[[int, int, dict], None] | None):
    self.writer, self.ckpt, self.total_steps, self.log_every = writer, ckpt, total_steps, log_every
    self.flops_per_token, self.peak, self.on_step = flops_per_token, peak, on_step
    self.last: dict[str, float] = {}
    self.window = {"t": time.perf_counter(), "tokens": 0, "steps": 0}

  def __call__(self, entry: tuple[int, Any, int]) -> None:
    s, m, ntok = entry
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    if not m.pop("finite"):
      self.ckpt.wait()
      self.writer.write(s, m)
      raise NonFiniteLossError(s, m["loss"], m["grad_norm"], self.ckpt.latest_step(),
                               self.ckpt.directory)
    self.writer.write(s, {**m, "tokens": ntok})
    self.last = m
    if self.on_step is not None:
      self.on_step(s, self.total_steps, {**m, "tokens": ntok})
    w = self.window
    w["tokens"] += ntok
    w["steps"] += 1
    if s % self.log_every == 0 or s == self.total_steps:
      now = time.perf_counter()
      dt = max(now - w["t"], 1e-9)
      tps = w["tokens"] / dt
      step_time = dt / max(w["steps"], 1)
      mfu = (self.flops_per_token * tps / (self.peak * jax.device_count())) if self.peak else None
      eta = (self.total_steps - s) * step_time
      logging.info("step %d/%d  loss %.4f  tokens/s %.0f  MFU %s  ETA %s", s, self.total_steps,
                   m["loss"], tps, f"{100 * mfu:.1f}%" if mfu is not None else "n/a", _hms(eta))
      self.writer.write(s, {"tokens_per_s": tps, "step_time_s": step_time,
                            **({"mfu": mfu} if mfu is not None else {})}, kind="perf")
      w.update(t=now, tokens=0, steps=0)


# --------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------


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
  config_lib.validate(cfg)
  workdir = _workdir(workdir)
  record.check_config(workdir, cfg)        # another run's workdir: refused before anything loads
  done = _finished(workdir)
  if done is not None:
    return done
  os.makedirs(workdir, exist_ok=True)
  mesh, rules = _join_and_mesh(cfg)
  fingerprint = record.write_config(workdir, cfg)
  t_start = time.perf_counter()

  with contextlib.ExitStack() as stack:
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), every=cfg.checkpoint.every,
                        keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save)
    stack.callback(ckpt.close)
    _trim_metrics(workdir, ckpt.latest_step() or 0)
    writer = metrics_lib.MetricWriter(workdir, tensorboard=cfg.metrics.tensorboard)
    stack.callback(writer.close)

    data = _data(cfg)
    objective = data.objective
    precomputed = objective.uses_reference and cfg.objective.reference == "precomputed"
    ref = _Reference(table=reference.load(workdir, reference.fingerprint(cfg)) if precomputed else None)
    m = _init_or_restore(cfg, ckpt, data, mesh, rules, needs_weights=(
        objective.uses_reference and not cfg.reference.path and ref.table is None))
    first = {k: v for k, v in data.stream._epoch_batches(data.stream.epoch)[0].items()
             if k != "example_id"}
    b_sh = batch_shardings(first, mesh, rules)
    ref = _reference(cfg, data, m, mesh, rules, workdir, ref, b_sh)
    m.host_params = None                   # the host copy is not needed any more
    train_step = _train_step(cfg, data, m, mesh, rules, b_sh, ref)

    if evaluator is None:
      evaluator = _Evaluator(cfg, data.tokenizer, mesh)
      stack.callback(evaluator.release)
    n_params = _n_params(m.abstract_state["params"])
    log = _StepLog(writer, ckpt, data.total_steps, cfg.train.log_every,
                   metrics_lib.train_flops_per_token(n_params, m.abstract.config.num_layers,
                                                     m.abstract.config.hidden_size, cfg.data.max_length),
                   metrics_lib.peak_flops_per_device(cfg.metrics.peak_flops), on_step)
    snapshots = _snapshot_plan(cfg, data.total_steps)
    status, step, state, final_gather = _loop(
        cfg, data, m, mesh, rules, ckpt, writer, log, train_step, ref, snapshots,
        cfg.export.snapshot_dir or workdir, evaluator, batch_transform, stop)

  export_dir = None
  if status == "completed" and cfg.export.hf:
    host_model = final_gather[0] if final_gather else gather_model(m.graphdef, state["params"])
    export_dir = save_export(host_model, os.path.join(workdir, "hf"), dtype=cfg.export.dtype or None,
                             tokenizer=data.tokenizer)
  elapsed = time.perf_counter() - t_start
  logging.info("%s: %d steps (%d this run) in %s", status, step, step - m.start_step, _hms(elapsed))
  result = RunResult(status, step, data.total_steps, workdir, export_dir, log.last)
  if status == "completed":
    record.write_done(workdir, {**dataclasses.asdict(result), "fingerprint": fingerprint})
  return result


def _loop(cfg, data: _Data, m: _Model, mesh, rules, ckpt: Checkpointer, writer, log: _StepLog,
          train_step: Callable, ref: _Reference, snapshots: dict[int, list[str]], snapshot_dir: str,
          evaluate, batch_transform, stop) -> tuple[str, int, Any, list]:
  """The steps from the state's step to the end (or a stop): ``(status, step, state, [the final
  host model, if a last-step snapshot gathered it])``. Saves the final checkpoint."""
  state, stream, total_steps = m.state, data.stream, data.total_steps
  m.state = None                             # donated by the first step: hold no stale reference
  tokens_seen = m.tokens_seen
  step = int(jax.device_get(state["step"]))
  m.start_step = step
  pending: tuple[int, Any, int] | None = None

  def meta() -> dict[str, Any]:
    return {"tokens_seen": tokens_seen, "total_steps": total_steps, "objective": data.objective.name,
            "model": cfg.model.path or cfg.model.random_init, "mesh": dict(mesh.shape)}

  final_gather: list[Any] = []   # [model] once the last step's parameters are on the host
  status = "completed"
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
    if ckpt.should_save(step) or preempt:
      ckpt.save(step, state, stream.state(), meta(), wait=preempt)
    if step in snapshots:
      host_model = gather_model(m.graphdef, state["params"])
      for name in snapshots[step]:
        out = save_export(host_model, os.path.join(snapshot_dir, name),
                          dtype=cfg.export.dtype or None, tokenizer=data.tokenizer)
        logging.info("step %d: snapshot %r exported to %s", step, name, out)
      if step == total_steps:   # a base run's θ3: the final export reuses this gather
        final_gather = [host_model]
    if preempt:
      status = "preempted"
      logging.warning("stopped at step %d on request; checkpoint saved in %s", step, ckpt.directory)
      break
  if pending is not None:
    log(pending)
  if status == "completed":
    ckpt.save(step, state, stream.state(), meta(), wait=True)
  ckpt.wait()
  return status, step, state, final_gather


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
  from elasticity.convert import save_pretrained
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
