"""Precomputed reference log-probs (DPO, KTO): computed once, cached in the workdir, attached to batches.

With ``objective.reference = "precomputed"`` the reference model's sequence log-probs of every
training example (for KTO also of its mismatched KL sequence) are computed once before training and
the reference model is freed. The table is saved to ``<workdir>/reference_logps.npz`` (process 0,
atomically, through `elasticity.atomic`) with a fingerprint of what it depends on — reference
checkpoint, tokenizer, dtypes, objective and data selection — so that a restarted run reuses it:
the same numbers (exact resume) without loading the reference model again. A table whose
fingerprint differs is recomputed.

Otherwise (``objective.reference = "on_the_fly"``) the reference model's parameters are placed on the
mesh beside the policy's and the step computes its log-probs. `prepare` does either, for the loop:
the reference is the initial policy unless ``reference.path`` names another checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import logging

from elasticity import atomic, convert
from elasticity import sharding as shd
from elasticity.models.scan import to_layout
from elasticity.train import compiled
from elasticity.train import config as train_config
from elasticity.train.data import BatchStream
from elasticity.train.init import RunData, RunModel, dtypes, on_host, tokenizer_path
from elasticity.train.step import batch_shardings, make_reference_fn, split_params

CACHE = "reference_logps.npz"
Table = dict[int, dict[str, float]]


def fingerprint(cfg) -> str:
  """What the table depends on, as canonical JSON."""
  what = {"reference": cfg.reference.path or cfg.model.path,
          "tokenizer": cfg.model.tokenizer or cfg.model.path,
          "dtype": cfg.model.dtype, "param_dtype": cfg.model.param_dtype,
          "objective": cfg.objective.name, "chunk_size": cfg.objective.chunk_size,
          "data": cfg.data.to_dict()}
  return json.dumps(what, sort_keys=True, default=str)


def precompute(objective, ref_graphdef, ref_params, examples, cfg, tokenizer, mesh, param_shardings,
               rules, kind: str) -> Table:
  """Reference log-probs of every example: ``{example index: {field: value}}``.

  The fields are those `elasticity.train.losses.reference_logps` gives (for KTO also the KL
  sequence's), computed in unshuffled batches of the run's global batch size.
  """
  stream = BatchStream(examples, batch_size=cfg.train.global_batch_size, max_length=cfg.data.max_length,
                       kind=kind, pad_id=tokenizer.pad_id, shuffle=False)
  batches = [{k: v for k, v in b.items()} for b in stream.epoch_batches(0)]
  ids = [b.pop("example_id") for b in batches]
  b_sh = batch_shardings(batches[0], mesh, rules)
  key = ("reference_fn", ref_graphdef, objective, mesh, compiled.tree_key(param_shardings),
         compiled.tree_key(b_sh))
  fn = compiled.get(key, lambda: make_reference_fn(ref_graphdef, objective, mesh, param_shardings,
                                                   b_sh))
  table: Table = {}
  for b, row_ids in zip(batches, ids):
    out = jax.device_get(fn(ref_params, shd.global_batch(b, mesh, rules)))
    for r, i in enumerate(row_ids):
      if i >= 0:
        table[int(i)] = {k: float(v[r]) for k, v in out.items()}
  logging.info("reference log-probs precomputed for %d examples", len(table))
  return table


def save(workdir: str, table: Table, fp: str) -> None:
  """Write the table (process 0 only), atomically (`elasticity.atomic`: nothing left on error)."""
  if jax.process_index() != 0 or not table:
    return
  ids = np.asarray(sorted(table), np.int64)
  fields = {k: np.asarray([table[int(i)][k] for i in ids], np.float32) for k in keys(table)}
  atomic.write_with(os.path.join(workdir, CACHE),
                    lambda tmp: np.savez(tmp, example_id=ids, fingerprint=np.asarray(fp), **fields),
                    suffix=".npz")


def load(workdir: str, fp: str) -> Table | None:
  """The cached table if there is one with this fingerprint, else None."""
  path = os.path.join(workdir, CACHE)
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    if str(f["fingerprint"]) != fp:
      logging.warning("%s was computed for another reference or data selection; recomputing", path)
      return None
    fields = [k for k in f.files if k not in ("example_id", "fingerprint")]
    ids = f["example_id"]
    values = {k: f[k] for k in fields}
  logging.info("reference log-probs of %d examples read from %s", len(ids), path)
  return {int(i): {k: float(values[k][n]) for k in fields} for n, i in enumerate(ids)}


def keys(table: Mapping[int, Mapping[str, float]]) -> tuple[str, ...]:
  return tuple(next(iter(table.values())).keys()) if table else ()


def attach(batch: Mapping[str, Any], table: Table) -> dict[str, np.ndarray]:
  """``batch`` with the precomputed reference fields of its rows (0 on padding rows)."""
  out = dict(batch)
  ids = batch["example_id"]
  for k in keys(table):
    out[k] = np.asarray([table[int(i)][k] if i >= 0 else 0.0 for i in ids], np.float32)
  return out


@dataclasses.dataclass
class Reference:
  """The reference of a run: its precomputed table, or its model (graphdef, sharded parameters)."""
  table: Table | None = None   # precomputed log-probs (then no reference model)
  graphdef: Any = None
  params: Any = None


def prepare(cfg, data: RunData, m: RunModel, mesh, rules, workdir: str, ref: Reference,
            b_sh: dict) -> Reference:
  """The reference model (DPO, KTO): the initial policy unless ``reference.path`` says otherwise;
  not needed at all when its log-probs are precomputed and cached.

  ``ref`` holds the cached table, if `load` found one; ``b_sh`` (the batch shardings) gets the
  precomputed fields' shardings.
  """
  objective = data.objective
  precomputed = objective.uses_reference and cfg.objective.reference == "precomputed"
  if objective.uses_reference and ref.table is None:
    if cfg.reference.path:
      dtype, pdtype = dtypes(cfg)
      with on_host():
        ref_model = to_layout(convert.load_pretrained(cfg.reference.path, dtype=dtype,
                                                      param_dtype=pdtype,
                                                      tokenizer=tokenizer_path(cfg)),
                              train_config.scan_layers(cfg))
      ref_host = split_params(ref_model)[1]
    else:
      if m.host_params is None:
        raise ValueError("config.reference.path: required with model.random_init")
      ref_host = m.host_params
    ref.graphdef = m.graphdef
    ref.params = shd.host_to_global(ref_host, m.shardings["params"])
  if precomputed and ref.table is None:
    ref.table = precompute(objective, ref.graphdef, ref.params, data.examples, cfg,
                           data.tokenizer, mesh, m.shardings["params"], rules, data.kind)
    save(workdir, ref.table, fingerprint(cfg))
  if precomputed:
    ref.params = ref.graphdef = None
    b_sh.update({k: shd.batch_sharding(mesh, 1, rules) for k in keys(ref.table)})
  return ref
