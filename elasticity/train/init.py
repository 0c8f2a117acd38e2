"""What a training run starts from: the processes joined and the mesh, the data, and the train state.

`elasticity.train.loop.train` calls these in order:

- `join_and_mesh`: join the other processes (`jax.distributed`), build the mesh and the sharding rules,
  and check that the global batch splits over the batch shards and microbatches;
- `load_data`: the tokenizer, the objective, the tokenized examples and the resumable batch stream
  (`RunData`), and the run's length in optimizer steps; `eval_datasets`: the records the compression
  evaluator measures;
- `load_model`: the pretrained model on the host (or only its config, or a random-init preset) and its
  abstract twin, with the compute/param dtypes, the layer layout and the remat policy;
- `init_or_restore`: the sharded train state (`RunModel`), restored from the latest checkpoint (state,
  data position and tokens seen) or created from the weights — the pretrained ones, or the jitted
  random initialiser of ``model.random_init`` (compiled once per process, `elasticity.train.compiled`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from elasticity import convert
from elasticity import data as data_lib
from elasticity import sharding as shd
from elasticity.models import abstract_model, create_model
from elasticity.models.presets import preset_config
from elasticity.models.scan import to_layout, with_layers_rule
from elasticity.tokenizers import load_tokenizer
from elasticity.train import compiled
from elasticity.train import config as train_config
from elasticity.train import metrics as metrics_lib
from elasticity.train import record
from elasticity.train.checkpoint import Checkpointer
from elasticity.train.data import BatchStream, load_examples, select
from elasticity.train.losses import Objective, objective_from_config
from elasticity.train.optimizer import make_optimizer
from elasticity.train.step import (init_train_state, make_opt_init, split_params, state_shardings,
                                   with_shardings)


def on_host():
  """A context placing new arrays in host memory (the CPU backend), if JAX has one here."""
  try:
    return jax.default_device(jax.local_devices(backend="cpu")[0])
  except RuntimeError:   # e.g. JAX_PLATFORMS=tpu: no CPU backend
    logging.warning("no CPU backend: the checkpoint is read onto the default device")
    return contextlib.nullcontext()


def dtypes(cfg) -> tuple[jnp.dtype, jnp.dtype]:
  """(compute dtype, parameter dtype) of ``config.model``."""
  return jnp.dtype(cfg.model.dtype), jnp.dtype(cfg.model.param_dtype)


def tokenizer_path(cfg) -> str:
  return cfg.model.tokenizer or cfg.model.path


def n_params(abstract_params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(abstract_params)))


# --------------------------------------------------------------------------------------------------
# Processes and mesh
# --------------------------------------------------------------------------------------------------


def join_and_mesh(cfg) -> tuple[Any, tuple]:
  """Join the other processes, build the mesh, check the batch fits it; ``(mesh, rules)``."""
  d = cfg.distributed
  shd.initialize_distributed(d.coordinator_address or None, d.num_processes or None,
                             d.process_id if d.process_id >= 0 else None)
  mesh = shd.mesh_from_config(cfg.mesh)
  rules = compiled.hashable(with_layers_rule(cfg.sharding.rules))
  logging.info("mesh %s over %d devices (%d processes)", dict(mesh.shape), mesh.size, jax.process_count())
  if cfg.train.global_batch_size % (shd.batch_divisor(mesh, rules) * cfg.train.num_microbatches):
    raise ValueError(f"config.train.global_batch_size={cfg.train.global_batch_size} is not a multiple "
                     f"of num_microbatches ({cfg.train.num_microbatches}) × batch shards "
                     f"({shd.batch_divisor(mesh, rules)})")
  return mesh, rules


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def data_kind(objective_name: str) -> str:
  """The batch kind an objective trains on (`elasticity.train.data.KINDS`)."""
  return {"sft": "sft", "kto": "unpaired"}.get(objective_name, "preference")


def log_kto_balance(examples, objective) -> None:
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


@dataclasses.dataclass
class RunData:
  tokenizer: Any
  objective: Objective
  kind: str
  examples: Any
  stream: BatchStream
  total_steps: int


def load_data(cfg) -> RunData:
  """Tokenizer, objective, examples and the batch stream; the run's length in optimizer steps."""
  tokenizer = load_tokenizer(tokenizer_path(cfg))
  objective = objective_from_config(cfg.objective)
  kind = data_kind(objective.name)
  examples = load_examples(cfg.data, tokenizer, kind)
  logging.info("data: %s", examples.report)
  if kind == "unpaired":
    log_kto_balance(examples, objective)
  stream = BatchStream(examples, batch_size=cfg.train.global_batch_size, max_length=cfg.data.max_length,
                       kind=kind, pack=cfg.data.pack, pad_id=tokenizer.pad_id, seed=cfg.seed,
                       shuffle=cfg.data.shuffle, drop_last=cfg.data.drop_last)
  total_steps = cfg.train.num_steps or cfg.train.num_epochs * stream.batches_per_epoch
  return RunData(tokenizer, objective, kind, examples, stream, total_steps)


def eval_datasets(cfg) -> dict[str, tuple[list, str]]:
  """``{name: (records, template)}`` of ``eval.datasets`` (empty when evaluation is off)."""
  if cfg.eval.every <= 0 or not cfg.eval.datasets:
    return {}
  out = {}
  for name, ds in cfg.eval.datasets.items():
    records = data_lib.load_dataset(ds.name, ds.get("split") or None,
                                    **dict(ds.get("load_kwargs") or {}))
    out[name] = (select(records, ds), ds.get("template", "plain"))
  return out


# --------------------------------------------------------------------------------------------------
# Model and train state
# --------------------------------------------------------------------------------------------------


def load_model(cfg, tokenizer: str | None, weights: bool = True):
  """(model on the host, its abstract twin) with compute/param dtypes and the remat policy.

  ``weights=False`` reads only the checkpoint's config (the model is None): a resumed run takes its
  parameters from the train-state checkpoint.
  """
  dtype, pdtype = dtypes(cfg)
  remat = None if cfg.model.remat == "none" else cfg.model.remat
  scan, impl = train_config.scan_layers(cfg), cfg.model.attention_impl
  if cfg.model.random_init:
    mcfg = preset_config(cfg.model.random_init)
    model = None
  elif not weights:
    mcfg = convert.load_config(cfg.model.path)
    model = None
  else:
    with on_host():   # host memory: never one accelerator holding the whole model
      model = to_layout(convert.load_pretrained(cfg.model.path, dtype=dtype, param_dtype=pdtype,
                                                tokenizer=tokenizer), scan)
    model.set_attention_impl(impl)
    mcfg = model.config
    model.remat = remat
  abstract = abstract_model(mcfg, dtype=dtype, param_dtype=pdtype, scan_layers=scan,
                            attention_impl=impl)
  abstract.remat = remat
  return model, abstract


@dataclasses.dataclass
class RunModel:
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


def random_init(cfg, shardings) -> Callable[[], Any]:
  """The jitted random initialiser of ``model.random_init`` (cached per preset, dtypes and seed)."""
  mcfg = preset_config(cfg.model.random_init)
  dtype, pdtype = dtypes(cfg)
  seed = int(cfg.seed)

  scan, impl = train_config.scan_layers(cfg), cfg.model.attention_impl

  def build():
    return jax.jit(lambda: split_params(create_model(mcfg, dtype=dtype, param_dtype=pdtype,
                                                     seed=seed, scan_layers=scan,
                                                     attention_impl=impl))[1],
                   out_shardings=shardings["params"])
  return compiled.get(("random_init", cfg.model.random_init, dtype, pdtype, seed, scan, impl,
                       compiled.tree_key(shardings["params"])), build)


def init_or_restore(cfg, ckpt: Checkpointer, data: RunData, mesh, rules, model, abstract) -> RunModel:
  """The sharded train state: restored from the latest checkpoint, or created from the weights.

  ``model``, ``abstract``: from `load_model`; ``model`` is None when no weights were read (a resumed
  run, or a random init).
  """
  graphdef, _ = split_params(abstract)
  tx, schedule = make_optimizer(cfg.optimizer, data.total_steps)
  abstract_state, shardings = state_shardings(abstract, tx, mesh, rules)
  host_params = split_params(model)[1] if model is not None else None
  tokens_seen = 0
  if ckpt.latest_step() is not None:
    step, state, data_state, meta = ckpt.restore(with_shardings(abstract_state, shardings))
    data.stream.restore(data_state)
    tokens_seen = int(meta.get("tokens_seen", 0))
    logging.info("resumed at step %d (data position %s)", step, data_state)
  else:
    opt_key = compiled.optimizer_key(cfg.optimizer, data.total_steps)
    opt_init = compiled.get(("opt_init", opt_key, compiled.tree_key(shardings["opt_state"])),
                            lambda: make_opt_init(tx, shardings))
    init = host_params if host_params is not None else random_init(cfg, shardings)()
    state = init_train_state(init, tx, shardings, cfg.seed, opt_init=opt_init)
  return RunModel(graphdef, abstract, abstract_state, shardings, tx, schedule, state, host_params,
                  tokens_seen)


def open_run(cfg, workdir: str, stack: contextlib.ExitStack):
  """(checkpointer, metric writer) of a run in ``workdir``, closed by ``stack``; the metrics log is
  trimmed to the checkpoint the run resumes from (every objective's loop starts this way)."""
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), every=cfg.checkpoint.every,
                      keep=cfg.checkpoint.keep, async_save=cfg.checkpoint.async_save,
                      at_end=cfg.checkpoint.get("at_end", True))
  stack.callback(ckpt.close)
  record.trim_metrics(workdir, ckpt.latest_step() or 0)
  writer = metrics_lib.MetricWriter(workdir, tensorboard=cfg.metrics.tensorboard)
  stack.callback(writer.close)
  return ckpt, writer
