"""The resistance experiment as the runner sees it: `Resistance` (its grid from `grid`), and
`prepare`, which writes the data files (`data`) and builds the point evaluator (`evaluate`).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from absl import logging

from elasticity import atomic
from elasticity.experiments.core.cells import Cell
from elasticity.experiments.core.protocol import Experiment
from elasticity.experiments.resistance import grid
from elasticity.experiments.resistance.data import build_files
from elasticity.experiments.resistance.evaluate import ResistanceEvaluator
from elasticity.experiments.resistance.grid import EXPERIMENT_DIR
from elasticity.tokenizers import load_tokenizer


def prepare(c, workdir):
  tokenizer = load_tokenizer(c.model.tokenizer or c.model.path)
  files = build_files(c, tokenizer)
  resolve = lambda p: Path(p.replace(EXPERIMENT_DIR, os.fspath(workdir)))
  if jax.process_index() == 0:
    for path, rows in files.items():
      if not resolve(path).exists():
        atomic.write_jsonl(resolve(path), rows)
        logging.info("wrote %d records to %s", len(rows), resolve(path))
  return ResistanceEvaluator(c, {resolve(p): rows for p, rows in files.items()}, workdir)


class Resistance(Experiment):
  """The resistance grid (`grid`) and its point evaluator; no refinement."""

  def validate(self, config) -> None:
    grid.validate(config)

  def plan(self, config) -> list[Cell]:
    return grid.plan(config)

  def prepare(self, config, workdir) -> ResistanceEvaluator:
    return prepare(config, workdir)


EXPERIMENT = Resistance()
