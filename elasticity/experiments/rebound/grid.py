"""The rebound experiment's grid (paper §5.2, App. B.2, Table 3): its checks, cells and bisection.

Stage 1: the base model → SFT on n⁺ positive examples. Stage 2: → the reverse step on n⁻ negative
examples (SFT; DPO / SimPO / KTO on n⁻ pairs with the negative side chosen; PPO on n⁻ rollout prompts
rewarded toward the negative side: `elasticity.experiments.rebound.reverse`). Evaluated at the base,
after stage 1 (n⁻ = 0) and at every n⁻ > 0 (`elasticity.experiments.rebound.evaluate`: generations, the
scorer's score, Δγ, KL to the base).

Cells, for each seed and n⁺ (``configs/experiments/rebound.py``):

- ``base``: the base model, evaluated (one cell for all seeds);
- ``s<seed>/pos<n⁺>``: stage 1, starting from the base; **n⁺ = 0 is the control arm**: no stage-1 cell,
  its stage-2 cells start from the base model itself, with the same negative examples, schedule, seed
  and evaluation prompts as every n⁺ > 0 branch;
- ``s<seed>/pos<n⁺>/<reverse>``: stage 2, starting from stage 1's export, **one run with a snapshot
  at each n⁻** when that run is, step for step, the paper's separate run for that n⁻: a constant
  schedule without warm-up, one epoch, the negative examples in prefix order (``shuffle=False``), n⁻ a
  multiple of the global batch, and an objective whose per-example terms do not depend on the rest of
  the data (SFT, DPO, SimPO, PPO — whose step k rolls out the k-th batch of prompts with a seed of k;
  not KTO, whose KL partners and z0 do). The snapshot after n⁻/batch steps has then seen exactly the
  first n⁻ examples with the same updates a separate n⁻-example run makes;
  ``tests/test_experiments_rebound.py`` checks this bit for bit for SFT.
- ``s<seed>/pos<n⁺>/<reverse>-neg<n⁻>``: a separate stage-2 run for every other n⁻;
- ``s<seed>/pos<n⁺>/neutral`` (when ``neutral.dataset`` is set): **the neutral arm**, stage 2 by SFT
  on data that carries no sentiment (`elasticity.experiments.rebound.data.neutral_records`), n⁻
  examples of the same token length and the same schedule as each n⁻ point, from every stage-1 model
  and from the base (n⁺ = 0); its rows have ``stage = "neutral"`` and ``n_neg`` = the budget.

**Table 3** (KL to base): with ``table3.bisect_steps > 0``, after the grid is done `refine` looks, per
seed and n⁺, for the first n⁻ on the grid whose ``kl_to_base`` is under ``table3.threshold`` and adds
separate stage-2 runs at midpoints between it and the grid point before it (PPO: rounded down to whole
rollout batches), one bisection step per round,
so the report's "smallest n⁻ under the threshold" is known to within the final interval.
"""

from __future__ import annotations

import copy

from absl import logging

from elasticity.eval import ScorerConfigError, require_scorer
from elasticity.experiments.core import cells as cells_lib
from elasticity.experiments.core.cells import Cell, Point
from elasticity.experiments.rebound import data as tasks
from elasticity.experiments.rebound import reverse
from elasticity.experiments.rebound.reverse import REVERSES
from elasticity.train.config import data_section

SCORE_AS = ("share", "probability")     # config.eval.score_as (`evaluate.score_metrics`)

NEUTRAL_DATASETS = ("", *tasks.NEUTRAL_SOURCES)
ORDERS = ("pos_first", "neg_first")
EXPERIMENT_DIR = "{experiment_dir}"      # replaced by the runner with the experiment's folder
MATCHED_PAIRS = "{cell_dir}/pairs.jsonl"  # written by `pairs.build` before the cell's run
REVERSE_OBJECTIVES = {"sft": dict(name="sft"), "dpo": dict(name="dpo", beta=0.1),
                      "simpo": dict(name="simpo", beta=2.0, gamma=0.5),
                      "kto": dict(name="kto", beta=0.1, desirable_weight=1.0, undesirable_weight=1.0),
                      "ppo": dict(name="ppo")}


# -- checks before anything is loaded -------------------------------------------------------------


def validate(c) -> None:
  for key, allowed in (("task", tasks.TASKS), ("reverse", REVERSES), ("order", ORDERS)):
    if c[key] not in allowed:
      raise ValueError(f"config.{key}: {c[key]!r} is not one of {allowed}")
  n_pos, n_neg = [int(n) for n in c.n_pos], [int(n) for n in c.n_neg]
  if not n_pos or min(n_pos) < 0 or len(set(n_pos)) != len(n_pos):
    raise ValueError(f"config.n_pos: want distinct sizes >= 0 (0: the control arm), got {list(c.n_pos)}")
  if not any(n > 0 for n in n_neg):
    raise ValueError(f"config.n_neg: want at least one stage-2 size > 0, got {list(c.n_neg)}")
  if not n_neg or min(n_neg) < 0 or len(set(n_neg)) != len(n_neg):
    raise ValueError(f"config.n_neg: want distinct sizes >= 0, got {list(c.n_neg)}")
  if not c.seeds or len(set(int(x) for x in c.seeds)) != len(c.seeds):
    raise ValueError(f"config.seeds: want at least one seed, all distinct, got {list(c.seeds)}")
  if c.eval.get("score_as", "share") not in SCORE_AS:
    raise ValueError(f"config.eval.score_as: {c.eval.score_as!r} is not one of {SCORE_AS}")
  if c.neutral.dataset not in NEUTRAL_DATASETS:
    raise ValueError(f"config.neutral.dataset: {c.neutral.dataset!r} is not one of {NEUTRAL_DATASETS}")
  if c.neutral.on_fail not in ("refuse", "report"):
    raise ValueError(f"config.neutral.on_fail: {c.neutral.on_fail!r} is not 'refuse' or 'report'")
  if not c.model.path:
    raise ValueError("config.model.path: the base model's checkpoint is required")
  cells = plan(c)
  reverse.validate(c, next((x.train for x in cells if x.coords["stage"] == "neg"), None)
                   if c.reverse == "ppo" else None)
  tasks.check_sizes(c)      # every data requirement against the files, before any model loads
  cells_lib.validate_training(cells, c.model.path, check_scorer=False)
  scorer = str(c.eval.scorer.path)     # last: a dry run reports a missing scorer and goes on
  try:
    if not scorer:
      raise ScorerConfigError(
          f"config.eval.scorer.path: the {c.task} task scores continuations with "
          + ("a sentiment classifier" if c.task == "imdb" else "a safety classifier (P(safe))")
          + f" (train one: python -m launch.scorer --config=configs/scorer.py:{c.task} --workdir=DIR"
          + ("" if c.task == "imdb" else "; or a local cost/reward model with its sign")
          + "); set it, or set it to 'none' to measure only Δγ and the KL")
    if scorer != "none":
      require_scorer(c.eval.scorer, "config.eval.scorer.path")   # reads only its config.json
    reverse.validate_scorers(c)
  except ScorerConfigError as e:
    if reverse.cell_inputs(c):
      e.note = ("The stage-2 cells' ids include the scorer folder's files (it rates their pairs or "
                "rewards): until it is in place, the ids listed here are not the ones the run will use")
    raise


# -- the grid ---------------------------------------------------------------------------------------


def _labels(c) -> tuple[str, str]:
  return ("pos", "neg") if c.order == "pos_first" else ("neg", "pos")


def _file(c, role: str, **spec) -> str:
  key = cells_lib.digest({"task": c.task, "order": c.order, "role": role, "prompt_tokens":
                          int(c.prompt_tokens), "tokenizer": c.model.tokenizer or c.model.path,
                          "heldout": int(c.eval.heldout), "eval_seed": int(c.eval.data_seed), **spec})
  return f"{EXPERIMENT_DIR}/data/{c.task}-{role}-{key}.jsonl"


def pairs_file(c, seed: int) -> str:
  """The mismatched pairs (``pairs.construction = mismatched``)."""
  return _file(c, "pairs", seed=seed, n=max(int(n) for n in c.n_neg),
               offset=max(int(n) for n in c.n_pos))


def prompts_file(c, seed: int) -> str:
  """The stage-2 prompts of PPO's rollouts and of the matched pairs (`reverse.prompt_count`)."""
  return _file(c, "prompts", seed=seed, n=reverse.prompt_count(c), template=c.data.template,
               max_tokens=int(c.data.max_length) - reverse.new_tokens(c))


def pool_file(c, role: str, seed: int) -> str:
  return _file(c, role, seed=seed)


def neutral_file(c, seed: int) -> str:
  return _file(c, "neutral", seed=seed, dataset=c.neutral.dataset, max_length=int(c.data.max_length),
               n=max(int(n) for n in c.n_neg))


def _data(c, stage: int, n: int, seed: int, neutral: bool = False):
  base = dict(max_length=int(c.data.max_length), seed=seed, template=c.data.template)
  if neutral:
    return data_section(name="jsonl", split="", load_kwargs=dict(
                            path=neutral_file(c, seed), kind="text" if c.task == "imdb" else "sft"),
                        n=0, slice=(0, n), shuffle=False,
                        policy="truncate_response" if c.task == "imdb" else "truncate_prompt_left",
                        **base)
  if stage == 2 and c.reverse == "ppo":
    return data_section(name="jsonl", split="", load_kwargs=dict(path=prompts_file(c, seed),
                        kind="prompt"), n=0, slice=(0, n), shuffle=False, **base)
  if stage == 2 and c.reverse != "sft":
    path = MATCHED_PAIRS if reverse.matched_pairs(c) else pairs_file(c, seed)
    return data_section(name="jsonl", split="", load_kwargs=dict(path=path, kind="preference"), n=0,
                        slice=(0, n), shuffle=False, policy="truncate_response", **base)
  shuffle = stage == 1
  if c.task == "imdb":
    label = _labels(c)[stage - 1]
    return data_section(name="imdb", split="train", load_kwargs=dict(label=label), n=n,
                        shuffle=shuffle, policy="truncate_response", **base)
  role = "positive" if stage == 1 else "negative"
  return data_section(name="jsonl", split="", load_kwargs=dict(path=pool_file(c, role, seed),
                      kind="sft"), n=0, slice=(0, n), shuffle=shuffle,
                      policy="truncate_prompt_left", **base)


def _train(c, stage: int, n: int, seed: int, snapshots: dict[str, int] | None = None,
           neutral: bool = False):
  t = copy.deepcopy(c.train)
  t.unlock()
  t.seed = seed
  t.model.path, t.model.tokenizer = "", ""      # the runner fills in the parent's model
  t.data = _data(c, stage, n, seed, neutral)
  if stage == 2 and not neutral:
    t.objective.update(REVERSE_OBJECTIVES[c.reverse])
    if c.reverse == "ppo":
      t.ppo = reverse.ppo_section(c)
    elif c.reverse != "sft":
      t.objective.reference = "precomputed"
  t.export.snapshots = ",".join(f"{k}={v}" for k, v in (snapshots or {}).items())
  t.lock()
  return t


def shares_snapshots(c, n: int, step: str | None = None) -> bool:
  """Whether n⁻ = n can be a snapshot of one longer stage-2 run (module docstring)."""
  t, o = c.train, c.train.optimizer
  return ((step or c.reverse) in ("sft", "dpo", "simpo", "ppo") and o.schedule == "constant"
          and o.warmup_steps == 0
          and t.train.num_steps == 0 and t.train.num_epochs == 1 and t.data.drop_last is False
          and n % int(t.train.global_batch_size) == 0)


def _coords(c, **kw):
  return {"model": c.model.name, "task": c.task, "reverse": c.reverse, "order": c.order, **kw}


def _parent(seed: int, n_pos: int) -> tuple[str, str]:
  """(parent cell, its model) of a stage-2 cell: stage 1's export, or the base itself (n⁺ = 0)."""
  return ("base", "start") if n_pos == 0 else (f"s{seed}/pos{n_pos}", "final")


def stage2_cells(c, seed: int, n_pos: int, ns: list[int], neutral: bool = False) -> list[Cell]:
  """Stage-2 cells after ``s<seed>/pos<n_pos>`` (the base for n_pos = 0) for the n⁻ values ``ns``;
  ``neutral``: the neutral arm's cells (SFT on the neutral data, stage ``neutral``)."""
  parent, parent_model = _parent(seed, n_pos)
  prefix = f"s{seed}/pos{n_pos}"
  step = "neutral" if neutral else c.reverse
  coords = _coords(c, n_pos=n_pos, stage="neutral" if neutral else "neg")
  shared = sorted(n for n in ns if shares_snapshots(c, n, "sft" if neutral else None))
  inputs = {} if neutral else reverse.cell_inputs(c)
  out = []
  if shared:
    batch = int(c.train.train.global_batch_size)
    top = shared[-1]
    snaps = {f"neg{n}": n // batch for n in shared[:-1]}
    points = tuple(Point(f"neg={n}", f"neg{n}" if n != top else "final", {"n_neg": n}) for n in shared)
    out.append(Cell(f"{prefix}/{step}", coords, train=_train(c, 2, top, seed, snaps, neutral),
                    parent=parent, parent_model=parent_model, points=points, seed=seed,
                    data={"n_neg": top}, inputs=inputs))
  for n in sorted(set(ns) - set(shared)):
    out.append(Cell(f"{prefix}/{step}-neg{n}", coords, train=_train(c, 2, n, seed, neutral=neutral),
                    parent=parent, parent_model=parent_model,
                    points=(Point(f"neg={n}", "final", {"n_neg": n}),), seed=seed, data={"n_neg": n},
                    inputs=inputs))
  return out


def plan(c) -> list[Cell]:
  out = [Cell("base", _coords(c, n_pos=0, n_neg=0, stage="base"), start_path=c.model.path,
              start_tokenizer=c.model.tokenizer, points=(Point("base", "start"),),
              seed=int(c.seeds[0]))]
  negs = [int(n) for n in c.n_neg if int(n) > 0]
  for seed in (int(s) for s in c.seeds):
    for n_pos in (int(n) for n in c.n_pos):
      if n_pos > 0:
        out.append(Cell(f"s{seed}/pos{n_pos}", _coords(c, n_pos=n_pos, stage="pos"),
                        train=_train(c, 1, n_pos, seed), parent="base", parent_model="start",
                        points=(Point("pos", "final", {"n_neg": 0}),), seed=seed,
                        data={"n_pos": n_pos}))
      out.extend(stage2_cells(c, seed, n_pos, negs))
      if c.neutral.dataset:
        out.extend(stage2_cells(c, seed, n_pos, negs, neutral=True))
  return out


def refine(c, rows: list[dict]) -> list[Cell]:
  """One bisection round of Table 3's threshold crossing (module docstring); [] when none is left."""
  steps, thr = int(c.table3.bisect_steps), float(c.table3.threshold)
  if steps <= 0:
    return []
  grid = {int(n) for n in c.n_neg}
  out = []
  for seed in (int(s) for s in c.seeds):
    for n_pos in (int(n) for n in c.n_pos):
      kl = {}
      for r in rows:
        co = r["coords"]
        if (r["seed"] == seed and co.get("n_pos") == n_pos and co.get("stage") in ("pos", "neg")
            and "kl_to_base" in r["metrics"]):
          kl[int(co["n_neg"])] = float(r["metrics"]["kl_to_base"])
      under = sorted(n for n, v in kl.items() if v < thr)
      if not under:
        continue
      hi = under[0]
      below = sorted(n for n in kl if n < hi)
      if not below:
        continue
      lo = below[-1]
      done = len([n for n in kl if n not in grid])
      if hi - lo <= 1 or done >= steps:
        continue
      mid = (lo + hi) // 2
      if c.reverse == "ppo":     # whole rollout batches only
        batch = int(c.train.train.global_batch_size)
        mid = mid // batch * batch
        if mid <= lo:
          continue
      logging.info("table 3 bisection: seed %d, n⁺=%d: KL %.4g at n⁻=%d, %.4g at %d; trying %d", seed,
                   n_pos, kl[lo], lo, kl[hi], hi, mid)
      cell = stage2_cells(c, seed, n_pos, [mid])
      for x in cell:   # a bisection point is always its own run
        x.name = f"s{seed}/pos{n_pos}/{c.reverse}-neg{mid}"
      out.extend(cell)
  return out
