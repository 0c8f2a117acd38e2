"""The rebound experiment as the runner sees it: `Rebound` (its grid from `grid`), `prepare`, which
writes the data files the cells read (`data`) and builds the point evaluator (`evaluate`), and
`Rebound.before_train`, which samples a stage-2 cell's matched preference pairs from its start model
(`pairs`).

`prepare` also rates the neutral arm's data with the scorer (when one is configured) and writes
``neutral_check.json``: the mean score of the neutral texts, the scorer's neutral midpoint and the
tolerance; data rated outside midpoint ± tolerance is refused in one line (``neutral.on_fail =
"refuse"``) or used with a loud warning that the report repeats (``"report"``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from elasticity import atomic
from elasticity.eval.scorers import scorer_from_config
from elasticity.experiments.core import cells as cells_lib
from elasticity.experiments.core.cells import Cell
from elasticity.experiments.core.protocol import Experiment, TrainContext
from elasticity.experiments.rebound import data as tasks
from elasticity.experiments.rebound import grid, pairs, reverse
from elasticity.experiments.rebound.evaluate import PointEvaluator, scorer_kind
from elasticity.experiments.rebound.grid import (EXPERIMENT_DIR, neutral_file, pairs_file, pool_file,
                                                 prompts_file)
from elasticity.experiments.rebound.stats import direction
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
    if reverse.mismatched_pairs(c):
      tasks.write_pool(resolve(pairs_file(c, seed)),
                       tasks.pairs(data, n_neg_max, n_pos_max, int(c.prompt_tokens), tokenizer),
                       ("prompt", "chosen", "rejected"))
    if reverse.prompt_count(c) and not os.path.exists(resolve(prompts_file(c, seed))):
      tasks.write_pool(resolve(prompts_file(c, seed)), tasks.stage2_prompts(
          data, reverse.prompt_count(c), prompt_tokens=int(c.prompt_tokens), tokenizer=tokenizer,
          template=c.data.template, max_tokens=int(c.data.max_length) - reverse.new_tokens(c),
          variant=str(c.variant)), ("prompt",))
    if c.neutral.dataset:
      path = resolve(neutral_file(c, seed))
      if not os.path.exists(path):
        recs = tasks.neutral_records(c.neutral.dataset, task=c.task, seed=seed, n=n_neg_max,
                                     max_length=int(c.data.max_length), tokenizer=tokenizer,
                                     variant=str(c.variant))
        tasks.write_pool(path, recs, ("text",) if c.task == "imdb" else ("prompt", "response"))
      if seed == int(c.seeds[0]) and scorer is not None:
        check_neutral(c, atomic.read_jsonl(path), scorer, workdir)
  ids = cells_lib.identities(grid.plan(c))
  # prompts and held-out data are the same for every seed (tasks.build)
  return PointEvaluator(ev, base_path=c.model.path, base_tokenizer=c.model.tokenizer,
                        prompts=data.prompts if data is not None else [], heldout_pos=data.heldout_pos,
                        heldout_neg=data.heldout_neg, scorer=scorer, scorer_id=scorer_id,
                        base_point_dir=os.path.join(os.fspath(workdir), "cells", ids["base"], "points",
                                                    "base"),
                        direction=direction(c.order))


NEUTRAL_MIDPOINT = {"probability": 0.5, "reward": 0.0}


def check_neutral(c, records: list[dict], scorer, workdir) -> dict:
  """Rate the neutral texts with the scorer (module docstring); returns what it writes."""
  texts = [r.get("text") or r.get("response", "") for r in records]
  values = np.asarray(scorer.score(texts), dtype=np.float64)
  kind = scorer_kind(scorer)
  mid = float(c.neutral.midpoint) if c.neutral.midpoint is not None else NEUTRAL_MIDPOINT[kind]
  tol = float(c.neutral.tolerance)
  mean = float(values.mean())
  se = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
  out = {"dataset": c.neutral.dataset, "texts": len(texts), "kind": kind, "mean": mean, "se": se,
         "share_positive": float(np.mean(values > 0.5)) if kind == "probability" else None,
         "midpoint": mid, "tolerance": tol, "neutral": bool(abs(mean - mid) <= tol)}
  atomic.write_json(os.path.join(os.fspath(workdir), "neutral_check.json"), out)
  msg = (f"config.neutral.dataset: the scorer rates the {c.neutral.dataset} texts {mean:.3f} "
         f"(± {se:.3f} s.e., {len(texts)} texts), outside the neutral band {mid:g} ± {tol:g} "
         f"(config.neutral.tolerance)")
  if not out["neutral"]:
    if c.neutral.on_fail == "refuse":
      raise tasks.DataSizeError(msg + "; set config.neutral.on_fail=report to run it anyway")
    logging.warning("NOT NEUTRAL: %s; running it anyway (config.neutral.on_fail=report)", msg)
  else:
    logging.info("neutral data: the scorer rates the %s texts %.3f (band %g ± %g)",
                 c.neutral.dataset, mean, mid, tol)
  return out


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

  def before_train(self, config, context: TrainContext) -> None:
    if pairs.needed(config, context.cell):
      pairs.build(config, context, context.evaluator.scorer, process_index=jax.process_index())

  def refine(self, config, rows: Sequence[dict[str, Any]]) -> list[Cell]:
    return grid.refine(config, list(rows))


EXPERIMENT = Rebound()
