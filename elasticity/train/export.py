"""A trained model out of the run: gathered to the host and written as a Hugging Face directory.

The final export goes to ``<workdir>/hf``; ``export.snapshots`` names steps at which the model is
exported too (``<export.snapshot_dir or the workdir>/<name>``, e.g. the θ_k of a base run): the
**snapshot plan** (`snapshot_plan`). Gathering is a collective (every process calls `gather_model`);
only process 0 holds the model and writes.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging
from flax import nnx

from elasticity import convert
from elasticity.convert import hf as convert_hf
from elasticity import sharding as shd
from elasticity.train import config as config_lib


def gather_model(graphdef, params):
  """The model with its parameters gathered to the host: a collective, so every process calls it;
  process 0 gets the model, the others None."""
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
  # The run owns its export folders: one it exported before exports carried a marker is its own too.
  return os.fspath(convert.save_pretrained(model, out_dir, dtype=dtype, tokenizer=tokenizer,
                                           ours=convert_hf.is_hf_export))


def snapshot_plan(cfg, total_steps: int) -> dict[int, list[str]]:
  """``{step: [snapshot names]}`` from ``export.snapshots``; steps past the run are dropped (warned)."""
  snapshots: dict[int, list[str]] = {}
  for name, at in config_lib.parse_snapshots(cfg.export.snapshots).items():
    if at > total_steps:
      logging.warning("config.export.snapshots.%s: step %d is past the run's %d steps; not written",
                      name, at, total_steps)
      continue
    snapshots.setdefault(int(at), []).append(name)
  return snapshots


def write_snapshots(host_model, step: int, names: list[str], snapshot_dir: str, cfg,
                    tokenizer) -> None:
  """Export ``host_model`` (gathered at ``step``) under each of ``names`` in ``snapshot_dir``."""
  for name in names:
    out = save_export(host_model, os.path.join(snapshot_dir, name), dtype=cfg.export.dtype or None,
                      tokenizer=tokenizer)
    logging.info("step %d: snapshot %r exported to %s", step, name, out)
