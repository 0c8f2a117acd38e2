"""The project's jitted programs on abstract devices, from shapes alone: train step, `measure`, `generate`, KL.

Every program is the one the project runs — `elasticity.train.step.make_train_step` (with the
optimizer, objective, microbatches and remat of the config), `elasticity.compression.kernel.
code_lengths` as the `Scorer` jits it, `elasticity.models.generate`'s decoding loop, and
`elasticity.eval.kl`'s sharded evaluator — built with `jax.eval_shape`-style abstract values
(`jax.ShapeDtypeStruct` carrying a `NamedSharding` on a mesh of the target's devices): no weight,
batch or device memory is ever allocated, so a 13B model compiles for a 128-chip slice on a laptop.

`Program` holds the jitted function, its abstract arguments and what one call processes (tokens,
model FLOPs by the usual 6·N rule), for `elasticity.aot.memory`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from elasticity import sharding as shd
from elasticity.compression.kernel import code_lengths
from elasticity.data.packing import empty_rows
from elasticity.eval import kl as kl_lib
from elasticity.models import abstract_model
from elasticity.models.config import ModelConfig
from elasticity.models.generate import SamplingConfig, decoding_fn
from elasticity.models.scan import with_layers_rule
from elasticity.train import compiled
from elasticity.train import config as train_config
from elasticity.train.data import sft_fields
from elasticity.train.init import data_kind, dtypes, n_params
from elasticity.train.losses import objective_from_config
from elasticity.train.metrics import train_flops_per_token
from elasticity.train.optimizer import make_optimizer
from elasticity.train.step import batch_shardings, make_train_step, split_params, state_shardings

WHATS = ("train", "measure", "generate", "kl")


@dataclasses.dataclass
class Program:
  what: str
  fn: Callable                 # jitted
  args: tuple                  # ShapeDtypeStructs with NamedShardings
  mesh: Mesh
  tokens: int                  # tokens one call processes
  flops: float                 # model FLOPs of one call by the 6·N (train) / 2·N (forward) rule
  note: str = ""
  scanned: bool = True         # the layers as one scanned layer (False: unrolled)

  def lower(self):
    with jax.set_mesh(self.mesh):
      return self.fn.lower(*self.args)

  def compile(self):
    """The TPU executable. JAX's persistent cache is off meanwhile: it holds this host's executables,
    and a TPU one can be neither loaded nor run here."""
    lowered = self.lower()
    saved = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
      return lowered.compile()
    finally:
      jax.config.update("jax_enable_compilation_cache", saved)


# -- meshes ---------------------------------------------------------------------------------------
def mesh_sizes(preset: Mapping[str, int], n_devices: int, rows: int) -> tuple[dict[str, int], str]:
  """A preset's (data, fsdp, tensor) sizes on ``n_devices``, with the batch axes cut down when the
  ``rows`` of one microbatch do not split over them (the rest of the devices go to ``tensor``)."""
  sizes = dict(preset)
  dcn = {k: sizes.pop(k) for k in list(sizes) if k.startswith("dcn_")}
  data, fsdp, tensor = shd.resolve_axis_sizes((sizes.get("data", 1), sizes.get("fsdp", -1),
                                               sizes.get("tensor", 1)), n_devices)
  note = ""
  if rows % (data * fsdp):
    if rows % data:
      raise ValueError(f"{rows} rows per microbatch do not split over mesh.data={data}: raise "
                       "config.train.global_batch_size or lower config.train.num_microbatches")
    new = math.gcd(fsdp * tensor, rows // data)
    note = (f"mesh.fsdp {fsdp} → {new}, mesh.tensor {tensor} → {fsdp * tensor // new}: one microbatch "
            f"has {rows} rows (global_batch_size / num_microbatches), which the batch axes must divide")
    fsdp, tensor = new, fsdp * tensor // new
  return dict(data=data, fsdp=fsdp, tensor=tensor, **dcn), note


def make_mesh(devices: Sequence, sizes: Mapping[str, int]) -> Mesh:
  """`elasticity.sharding.make_mesh` over abstract devices (Auto axes: the programs lower as is)."""
  return shd.make_mesh(devices=list(devices), axis_types="auto", **dict(sizes))


def _abstract(tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def _shapes(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), tree)


# -- train ----------------------------------------------------------------------------------------
def train_batch(objective_name: str, batch: int, length: int, pack: bool, ref_fields: Sequence[str]
                ) -> dict[str, Any]:
  """The fields, shapes and dtypes of one global batch, as `elasticity.train.data.BatchStream` makes
  them (plus the precomputed reference log-probs the reference objectives read)."""
  rows = empty_rows(batch, length)
  kind = data_kind(objective_name)
  if kind == "sft":
    out = sft_fields(rows, pack)
  elif kind == "unpaired":
    out = {"example_mask": np.zeros(batch, np.float32), "label": np.zeros(batch, np.float32),
           **sft_fields(rows, False), **{f"kl_{k}": v for k, v in sft_fields(rows, False).items()}}
  else:
    out = {"example_mask": np.zeros(batch, np.float32)}
    for side in ("chosen", "rejected"):
      out.update({f"{side}_{k}": v for k, v in sft_fields(rows, False).items()})
  out.update({k: np.zeros(batch, np.float32) for k in ref_fields})
  return _shapes(out)


def train_program(cfg, mcfg: ModelConfig, mesh: Mesh) -> Program:
  """The config's train step (model, optimizer, objective, microbatches, remat) on ``mesh``."""
  rules = compiled.hashable(with_layers_rule(cfg.sharding.rules))
  dtype, pdtype = dtypes(cfg)
  # the layout a run on the target would use (config.model.scan_layers None = scanned off CPU)
  scan = train_config.scan_layers(cfg, platform=mesh.devices.flat[0].platform)
  model = abstract_model(mcfg, dtype=dtype, param_dtype=pdtype, scan_layers=scan,
                         attention_impl=cfg.model.attention_impl)
  model.remat = None if cfg.model.remat == "none" else cfg.model.remat
  graphdef, _ = split_params(model)
  objective = objective_from_config(cfg.objective)
  tx, schedule = make_optimizer(cfg.optimizer, max(1, int(cfg.train.num_steps) or 1000))
  state, shardings = state_shardings(model, tx, mesh, rules)
  b, t, m = int(cfg.train.global_batch_size), int(cfg.data.max_length), int(cfg.train.num_microbatches)
  divisor = shd.batch_divisor(mesh, rules) * m
  if b % divisor:
    raise ValueError(f"config.train.global_batch_size={b} is not a multiple of num_microbatches ({m}) × "
                     f"batch shards ({shd.batch_divisor(mesh, rules)}) of mesh {dict(mesh.shape)}")
  batch = train_batch(objective.name, b, t, bool(cfg.data.pack), objective.reference_fields(("kl_input_ids",)))
  b_sh = batch_shardings(batch, mesh, rules)
  step = make_train_step(graphdef, objective, tx, schedule, mesh, shardings, b_sh, num_microbatches=m,
                         rules=rules)
  rows = b * (2 if data_kind(objective.name) != "sft" else 1)
  flops = train_flops_per_token(n_params(state["params"]), mcfg.num_layers, mcfg.hidden_size, t) * rows * t
  return Program("train", step, (_abstract(state, shardings), _abstract(batch, b_sh)), mesh, rows * t, flops,
                 scanned=scan)


# -- evaluation programs --------------------------------------------------------------------------
def _eval_model(mcfg: ModelConfig, dtype, mesh: Mesh, rules, scan_layers: bool = True):
  model = abstract_model(mcfg, dtype=dtype, param_dtype=dtype, scan_layers=scan_layers)
  graphdef, state = nnx.split(model)
  sh = shd.param_shardings(state, mesh, rules)
  params = nnx.to_pure_dict(state)
  return graphdef, _abstract(params, sh), n_params(params)


def measure_program(mcfg: ModelConfig, mesh: Mesh, *, batch: int, length: int, dtype=jnp.bfloat16,
                    chunk_size: int = 512, rules: shd.Rules = shd.DEFAULT_RULES) -> Program:
  """The compression kernel as `elasticity.compression.scorer.Scorer` jits it (one segment per row)."""
  rules = with_layers_rule(rules)
  graphdef, params, n = _eval_model(mcfg, dtype, mesh, rules)
  shards = shd.batch_divisor(mesh, rules)
  batch = -(-batch // shards) * shards

  def score(params, ids, loss_mask, segment_ids, positions):
    return code_lengths(nnx.merge(graphdef, params), ids, loss_mask, segment_ids, positions,
                        num_segments=1, shards=shards, capacity=None, chunk_size=chunk_size)

  b_sh, rep = shd.batch_sharding(mesh, 2, rules), NamedSharding(mesh, P())
  fn = jax.jit(score, in_shardings=(jax.tree.map(lambda x: x.sharding, params), b_sh, b_sh, b_sh, b_sh),
               out_shardings=(rep, rep))
  row = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=b_sh)
  return Program("measure", fn, (params, row, row, row, row), mesh, batch * length,
                 2.0 * n * batch * length)


def generate_program(mcfg: ModelConfig, mesh: Mesh, *, batch: int, prompt_length: int,
                     new_tokens: int, dtype=jnp.bfloat16, rules: shd.Rules = shd.DEFAULT_RULES) -> Program:
  """`elasticity.models.generate`'s prefill + decoding loop (greedy, ``new_tokens`` steps)."""
  rules = with_layers_rule(rules)
  graphdef, params, n = _eval_model(mcfg, dtype, mesh, rules, scan_layers=False)
  shards = shd.batch_divisor(mesh, rules)
  batch = -(-batch // shards) * shards
  b_sh, rep = shd.batch_sharding(mesh, 2, rules), NamedSharding(mesh, P())
  fn = decoding_fn(graphdef, SamplingConfig(new_tokens), 0)
  ids = jax.ShapeDtypeStruct((batch, prompt_length), jnp.int32, sharding=b_sh)
  mask = jax.ShapeDtypeStruct((batch, prompt_length), jnp.bool_, sharding=b_sh)
  key = jax.eval_shape(lambda: jax.random.key(0))
  key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=rep)
  tokens = batch * (prompt_length + new_tokens)
  return Program("generate", fn, (params, ids, mask, key), mesh, tokens, 2.0 * n * tokens, scanned=False)


def kl_program(mcfg: ModelConfig, mesh: Mesh, *, batch: int, length: int, dtype=jnp.bfloat16,
               chunk_size: int = 128, rules: shd.Rules = shd.DEFAULT_RULES) -> Program:
  """`elasticity.eval.kl`'s sharded evaluator: policy and reference forwards, every position scored."""
  rules = with_layers_rule(rules)
  graphdef, params, n = _eval_model(mcfg, dtype, mesh, rules)
  shards = shd.batch_divisor(mesh, rules)
  batch = -(-batch // shards) * shards
  capacity = -(-(batch // shards) * length // chunk_size) * chunk_size
  fn, b_sh, idx_sh = kl_lib.sharded_fn(graphdef, graphdef, jax.tree.map(lambda x: x.sharding, params),
                                       jax.tree.map(lambda x: x.sharding, params), mesh, rules,
                                       min(chunk_size, capacity))
  ids = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=b_sh)
  mask = jax.ShapeDtypeStruct((batch, length), jnp.bool_, sharding=b_sh)
  idx = jax.ShapeDtypeStruct((shards, capacity), jnp.int32, sharding=idx_sh)
  return Program("kl", fn, (params, params, ids, mask, idx), mesh, batch * length,
                 4.0 * n * batch * length)


__all__ = ["Program", "WHATS", "generate_program", "kl_program", "make_mesh", "measure_program",
           "mesh_sizes", "train_batch", "train_program"]
