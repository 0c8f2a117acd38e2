"""A trained model out of the run: gathered to the host and written as a Hugging Face directory.

The final export goes to ``<workdir>/hf``; ``export.snapshots`` names steps at which the model is
exported too (``<export.snapshot_dir or the workdir>/<name>``, e.g. the θ_k of a base run): the
**snapshot plan** (`snapshot_plan`), which `Snapshots` carries out for a training loop (the SFT and the
PPO loop alike). Gathering is a collective (every process calls `gather_model`); only process 0 holds
the model and writes.
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


class Snapshots:
  """A run's snapshot plan, carried out: `after_step` exports the model at every planned step, and
  `on_resume` writes a planned snapshot of the restored step that a killed run did not write (killed
  after its checkpoint at that step, before the snapshot: the restored state is that step's model).

  A snapshot at the last step keeps its gathered model, so the final export (`final_model`) does not
  gather the parameters a second time. Every process calls every method (gathering is a collective).
  """

  def __init__(self, cfg, total_steps: int, directory: str, graphdef, tokenizer):
    self.plan = snapshot_plan(cfg, total_steps)
    self.cfg, self.total_steps, self.directory = cfg, int(total_steps), directory
    self.graphdef, self.tokenizer = graphdef, tokenizer
    self._final: list = []            # [the host model of the last step], once a snapshot gathered it

  def on_resume(self, step: int, params) -> None:
    missing = [n for n in self.plan.get(step, []) if not os.path.isdir(os.path.join(self.directory, n))]
    if step > 0 and missing:
      self._write(step, params, missing)

  def after_step(self, step: int, params) -> None:
    if step in self.plan:
      self._write(step, params, self.plan[step])

  def final_model(self, params):
    """The host model of the final parameters (`gather_model`), reusing a last-step snapshot's."""
    return self._final[0] if self._final else gather_model(self.graphdef, params)

  def _write(self, step: int, params, names: list[str]) -> None:
    host_model = gather_model(self.graphdef, params)
    write_snapshots(host_model, step, names, self.directory, self.cfg, self.tokenizer)
    if step == self.total_steps:
      self._final = [host_model]
