"""The resistance experiment's grid (paper §5.1, Tables 1–2): its checks, data file names and cells.

Cells, per seed (``configs/experiments/resistance.py``): ``s<seed>/base`` (one epoch on m·n examples
in order, points ``theta1..m``: the snapshots after each n; ``config.m``, default 3; the paper's
Table 2 uses finer checkpoints) and, for every pair k < l of `pairs` (all of them, derived from m),
``s<seed>/fwd<k><l>`` (θ_k trained on D_l) and ``s<seed>/inv<l><k>`` (θ_l trained on D_k). D_k is
the k-th third of the base run's data (``dk = slices``) or θ_k's responses to held-out prompts
(``dk = generated``); `elasticity.experiments.resistance.evaluate` says what each point records.
"""

from __future__ import annotations

import copy

from elasticity.data import load_dataset
from elasticity.experiments.core import cells as cells_lib
from elasticity.experiments.core.cells import Cell, Point
from elasticity.experiments.core.sizes import DataSizeError
from elasticity.train.config import data_section

DATASETS = ("alpaca", "truthfulqa", "beavertails")
DESIGNS = ("slices", "generated")
PAIRS = ((1, 2), (1, 3), (2, 3))        # the pairs of m = 3 (`pairs`)
EXPERIMENT_DIR = "{experiment_dir}"


# -- files -------------------------------------------------------------------------------------------


def num_checkpoints(c) -> int:
  return int(c.m)


def pairs(c) -> list[tuple[int, int]]:
  """Every pair k < l of θ1..θ_m."""
  m = num_checkpoints(c)
  return [(k, l) for k in range(1, m + 1) for l in range(k + 1, m + 1)]


def _key(c, **spec) -> str:
  m = num_checkpoints(c)
  if m != 3:            # absent at m = 3: the files (and cell ids) of three checkpoints stay as they were
    spec = {**spec, "m": m}
  return cells_lib.digest({"dataset": c.dataset, "n": int(c.n), "heldout": int(c.heldout),
                           "max_length": int(c.data.max_length),
                           "tokenizer": c.model.tokenizer or c.model.path,
                           "load_kwargs": c.data.load_kwargs.to_dict(), **spec})


def train_file(c, seed: int) -> str:
  """The m·n records of seed ``seed``, in the order the base cell visits them (D_1, …, D_m)."""
  return f"{EXPERIMENT_DIR}/data/{c.dataset}-train-s{seed}-{_key(c, seed=seed)}.jsonl"


def prompts_file(c, seed: int) -> str:
  """The m·n held-out prompts P_1, …, P_m of the generated design."""
  return f"{EXPERIMENT_DIR}/data/{c.dataset}-prompts-s{seed}-{_key(c, seed=seed)}.jsonl"


def heldout_file(c) -> str:
  return f"{EXPERIMENT_DIR}/data/{c.dataset}-heldout-{_key(c)}.jsonl"


def base_name(seed: int) -> str:
  return f"s{seed}/base"


def dk_source(c, seed: int, k: int) -> tuple[str, tuple[int, int]]:
  """(file, slice) of D_k for seed ``seed``."""
  n = int(c.n)
  if c.dk == "slices":
    return train_file(c, seed), ((k - 1) * n, k * n)
  return f"{{cell:{base_name(seed)}}}/points/theta{k}/dk.jsonl", (0, n)


# -- checks before anything is loaded ----------------------------------------------------------------


def dk_inputs(c) -> dict:
  """What decides a pair cell's D_k beyond its parent: in the generated design, the sampling of θ_k's
  responses (an evaluation setting of the base cell, so not in the parent's identity)."""
  return {"dk_generate": c.generate.to_dict()} if c.dk == "generated" else {}


def validate(c) -> None:
  if c.dataset not in DATASETS:
    raise ValueError(f"config.dataset: {c.dataset!r} is not one of {DATASETS}")
  if c.dk not in DESIGNS:
    raise ValueError(f"config.dk: {c.dk!r} is not one of {DESIGNS}")
  if isinstance(c.m, bool) or not isinstance(c.m, int) or c.m < 2:
    raise ValueError(f"config.m: want at least 2 checkpoints θ1..θ_m (an integer), got {c.m!r}")
  if not c.seeds or len(set(int(s) for s in c.seeds)) != len(c.seeds):
    raise ValueError(f"config.seeds: want distinct seeds, got {list(c.seeds)}")
  batch = int(c.train.train.global_batch_size)
  if int(c.n) < 1 or int(c.n) % batch:
    raise ValueError(f"config.n: D_k's size must be a positive multiple of the global batch {batch} "
                     f"(θ_k is the snapshot after k·n/batch steps), got {c.n}")
  if int(c.heldout) < 1:
    raise ValueError(f"config.heldout: want >= 1 held-out examples, got {c.heldout}")
  if int(c.loss.last_steps) < 1:
    raise ValueError(f"config.loss.last_steps: want >= 1, got {c.loss.last_steps}")
  if not c.model.path:
    raise ValueError("config.model.path: the pretrained model's checkpoint is required")
  check_sizes(c)
  cells_lib.validate_training(plan(c), c.model.path)


def records_needed(c) -> int:
  """Records of the source the grid reads: m·n training (+ m·n prompts, generated) + the held-out."""
  m, n = num_checkpoints(c), int(c.n)
  return m * n * (2 if c.dk == "generated" else 1) + int(c.heldout)


def check_sizes(c) -> None:
  """The records the grid needs against the records the dataset's file holds (before any tokenizer:
  a record that does not fit max_length is dropped later, so this is the first, fast check; the exact
  one, after fitting, is `elasticity.experiments.resistance.data.build_files`)."""
  have = len(load_dataset(c.dataset, None, **c.data.load_kwargs.to_dict()))
  need = records_needed(c)
  if need > have:
    m, n = num_checkpoints(c), int(c.n)
    parts = f"{m}·n={m * n} training" + (f" + {m * n} prompts" if c.dk == "generated" else "")
    raise DataSizeError(f"preset {c.variant or c.model.name!r}: dataset {c.dataset}: {need} records "
                        f"needed ({parts} + {int(c.heldout)} held-out), {have} available "
                        f"(config.n, config.m or config.heldout)")


# -- the grid ------------------------------------------------------------------------------------------


def _data(c, path: str, sl: tuple[int, int], seed: int, shuffle: bool):
  kwargs = dict(path=path, kind="sft")
  if c.dk == "generated" and "/dk.jsonl" in path:
    kwargs["allow_empty"] = True      # θ_k's response may be empty: it ended at once (EOS is scored)
  return data_section(name="jsonl", split="", load_kwargs=kwargs, n=0,
                      slice=tuple(sl), shuffle=shuffle, seed=seed, template="plain",
                      max_length=int(c.data.max_length), policy="truncate_prompt_left")


def _train(c, seed: int, path: str, sl: tuple[int, int], shuffle: bool, snapshots: str = ""):
  t = copy.deepcopy(c.train)
  t.unlock()
  t.seed = seed
  t.model.path, t.model.tokenizer = "", ""
  t.data = _data(c, path, sl, seed, shuffle)
  t.train.num_epochs, t.train.num_steps = 1, 0
  t.export.snapshots = snapshots
  t.lock()
  return t


def _coords(c, **kw):
  return {"model": c.model.name, "dataset": c.dataset, "dk": c.dk, **kw}


def plan(c) -> list[Cell]:
  n, batch, m = int(c.n), int(c.train.train.global_batch_size), num_checkpoints(c)
  per = n // batch
  out = []
  for seed in (int(s) for s in c.seeds):
    base = base_name(seed)
    snaps = ",".join(f"theta{k}={k * per}" for k in range(1, m))   # θ_m is the final export
    points = tuple(Point(f"theta{k}", f"theta{k}" if k < m else "final", {"k": k})
                   for k in range(1, m + 1))
    out.append(Cell(base, _coords(c, role="base"), start_path=c.model.path,
                    start_tokenizer=c.model.tokenizer, seed=seed, points=points,
                    train=_train(c, seed, train_file(c, seed), (0, m * n), False, snaps),
                    data={"n": m * n}))
    for k, l in pairs(c):
      for direction, start, target in (("forward", k, l), ("inverse", l, k)):
        path, sl = dk_source(c, seed, target)
        name = f"s{seed}/{'fwd' if direction == 'forward' else 'inv'}{start}{target}"
        out.append(Cell(name, _coords(c, role="pair", pair=f"{k}-{l}", direction=direction,
                                      start=start, target=target),
                        train=_train(c, seed, path, sl, bool(c.data.shuffle)), parent=base,
                        parent_model=f"theta{start}" if start < m else "final",
                        points=(Point("final", "final"),), seed=seed, data={"n": n},
                        inputs=dk_inputs(c)))
  return out
