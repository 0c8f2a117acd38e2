"""The resistance experiment's grid (paper §5.1, Tables 1–2): its checks, data file names and cells.

Cells, per seed (``configs/experiments/resistance.py``): ``s<seed>/base`` (one epoch on 3·n examples
in order, points ``theta1..3``: the snapshots after each third) and, for every pair k < l,
``s<seed>/fwd<k><l>`` (θ_k trained on D_l) and ``s<seed>/inv<l><k>`` (θ_l trained on D_k). D_k is
the k-th third of the base run's data (``dk = slices``) or θ_k's responses to held-out prompts
(``dk = generated``); `elasticity.experiments.resistance.evaluate` says what each point records.
"""

from __future__ import annotations

import copy

from elasticity.experiments.core import cells as cells_lib
from elasticity.experiments.core.cells import Cell, Point
from elasticity.train.config import data_section

DATASETS = ("alpaca", "truthfulqa", "beavertails")
DESIGNS = ("slices", "generated")
PAIRS = ((1, 2), (1, 3), (2, 3))
EXPERIMENT_DIR = "{experiment_dir}"


# -- files -------------------------------------------------------------------------------------------


def _key(c, **spec) -> str:
  return cells_lib.digest({"dataset": c.dataset, "n": int(c.n), "heldout": int(c.heldout),
                           "max_length": int(c.data.max_length),
                           "tokenizer": c.model.tokenizer or c.model.path,
                           "load_kwargs": c.data.load_kwargs.to_dict(), **spec})


def train_file(c, seed: int) -> str:
  """The 3·n records of seed ``seed``, in the order the base cell visits them (D_1, D_2, D_3)."""
  return f"{EXPERIMENT_DIR}/data/{c.dataset}-train-s{seed}-{_key(c, seed=seed)}.jsonl"


def prompts_file(c, seed: int) -> str:
  """The 3·n held-out prompts P_1, P_2, P_3 of the generated design."""
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
  cells_lib.validate_training(plan(c), c.model.path)


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
  n, batch = int(c.n), int(c.train.train.global_batch_size)
  per = n // batch
  out = []
  for seed in (int(s) for s in c.seeds):
    base = base_name(seed)
    snaps = ",".join(f"theta{k}={k * per}" for k in (1, 2))   # θ3 is the final export
    points = tuple(Point(f"theta{k}", f"theta{k}" if k < 3 else "final", {"k": k}) for k in (1, 2, 3))
    out.append(Cell(base, _coords(c, role="base"), start_path=c.model.path,
                    start_tokenizer=c.model.tokenizer, seed=seed, points=points,
                    train=_train(c, seed, train_file(c, seed), (0, 3 * n), False, snaps),
                    data={"n": 3 * n}))
    for k, l in PAIRS:
      for direction, start, target in (("forward", k, l), ("inverse", l, k)):
        path, sl = dk_source(c, seed, target)
        name = f"s{seed}/{'fwd' if direction == 'forward' else 'inv'}{start}{target}"
        out.append(Cell(name, _coords(c, role="pair", pair=f"{k}-{l}", direction=direction,
                                      start=start, target=target),
                        train=_train(c, seed, path, sl, bool(c.data.shuffle)), parent=base,
                        parent_model=f"theta{start}" if start < 3 else "final",
                        points=(Point("final", "final"),), seed=seed, data={"n": n},
                        inputs=dk_inputs(c)))
  return out
