"""The rebound experiment as the runner sees it: `Rebound` (its grid from `grid`), and `prepare`,
which writes the data files the cells read (`data`) and builds the point evaluator (`evaluate`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax

from elasticity.eval.scorers import scorer_from_config
from elasticity.experiments.core import cells as cells_lib
from elasticity.experiments.core.cells import Cell
from elasticity.experiments.core.protocol import Experiment
from elasticity.experiments.rebound import data as tasks
from elasticity.experiments.rebound import grid
from elasticity.experiments.rebound.evaluate import PointEvaluator
from elasticity.experiments.rebound.grid import EXPERIMENT_DIR, pairs_file, pool_file
from elasticity.tokenizers import load_tokenizer


def prepare(c, workdir):
  """Write the data files the cells read and build the point evaluator."""
  tokenizer = load_tokenizer(c.model.tokenizer or c.model.path)
  ev = c.eval
  n_pos_max, n_neg_max = max(int(n) for n in c.n_pos), max(int(n) for n in c.n_neg)
  scorer, scorer_id = None, ""
  if str(ev.scorer.path) != "none":
    scorer = scorer_from_config(ev.scorer, "config.eval.scorer")
    scorer_id = cells_lib.digest(ev.scorer.to_dict()) + ":" + _tree_digest(ev.scorer.path)
  data = None
  for seed in (int(s) for s in c.seeds):
    data = tasks.build(c.task, order=c.order, seed=seed, eval_seed=int(ev.data_seed),
                       tokenizer=tokenizer, num_prompts=int(ev.num_prompts),
                       prompt_tokens=int(c.prompt_tokens), heldout=int(ev.heldout),
                       heldout_tokens=int(ev.heldout_tokens))
    if jax.process_index() != 0:
      continue
    resolve = lambda p: p.replace(EXPERIMENT_DIR, os.fspath(workdir))
    if c.task != "imdb":
      tasks.write_pool(resolve(pool_file(c, "positive", seed)), data.positive[:n_pos_max],
                       ("prompt", "response"))
      tasks.write_pool(resolve(pool_file(c, "negative", seed)), data.negative[:n_neg_max],
                       ("prompt", "response"))
    if c.reverse != "sft":
      tasks.write_pool(resolve(pairs_file(c, seed)),
                       tasks.pairs(data, n_neg_max, n_pos_max, int(c.prompt_tokens), tokenizer),
                       ("prompt", "chosen", "rejected"))
  # prompts and held-out data are the same for every seed (tasks.build)
  return PointEvaluator(ev, base_path=c.model.path, base_tokenizer=c.model.tokenizer,
                        prompts=data.prompts if data is not None else [], heldout_pos=data.heldout_pos,
                        heldout_neg=data.heldout_neg, scorer=scorer, scorer_id=scorer_id)


def _tree_digest(path) -> str:
  """A digest of a folder's file names, sizes and modification times (a scorer's identity)."""
  entries = []
  for root, _, files in os.walk(os.fspath(path)):
    for f in sorted(files):
      st = os.stat(os.path.join(root, f))
      entries.append((os.path.relpath(os.path.join(root, f), path), st.st_size, st.st_mtime_ns))
  return cells_lib.digest(sorted(entries))


class Rebound(Experiment):
  """The rebound grid (`grid`), its point evaluator, and Table 3's bisection as `refine`."""
  refines = True

  def validate(self, config) -> None:
    grid.validate(config)

  def plan(self, config) -> list[Cell]:
    return grid.plan(config)

  def prepare(self, config, workdir) -> PointEvaluator:
    return prepare(config, workdir)

  def refine(self, config, rows: Sequence[dict[str, Any]]) -> list[Cell]:
    return grid.refine(config, list(rows))


EXPERIMENT = Rebound()
