"""The cell table a ``--dry_run`` prints: id, parent, data sizes, steps and tokens of every cell."""

from __future__ import annotations

import math
from collections.abc import Sequence

from elasticity.experiments.core.cells import Cell

REFINE_NOTE = "(plus the cells that refine() adds from the results, e.g. bisection points)"


def _steps(train) -> int:
  if train is None:
    return 0
  if train.train.num_steps:
    return int(train.train.num_steps)
  n = int(train.data.slice[1] - train.data.slice[0]) if train.data.slice else int(train.data.n)
  return int(train.train.num_epochs) * math.ceil(n / int(train.train.global_batch_size)) if n else 0


def table(cells: Sequence[Cell], ids: dict[str, str]) -> str:
  """The cell table of ``--dry_run``: id, parent, data sizes, steps, tokens (an upper bound)."""
  lines = [f"{'cell':<34} {'id':<12} {'parent':<12} {'data':<24} {'steps':>6} {'tokens≤':>11} points"]
  total_steps = total_tokens = 0
  for c in cells:
    steps = _steps(c.train)
    tokens = steps * int(c.train.train.global_batch_size) * int(c.train.data.max_length) if c.train else 0
    total_steps, total_tokens = total_steps + steps, total_tokens + tokens
    data = ", ".join(f"{k}={v}" for k, v in c.data.items()) or "-"
    parent = ids[c.parent] if c.parent else "-"
    lines.append(f"{c.name:<34} {ids[c.name]:<12} {parent:<12} {data:<24} {steps:>6} {tokens:>11} "
                 + ",".join(p.name for p in c.points))
  lines.append(f"{len(cells)} cells, {sum(c.train is not None for c in cells)} training runs, "
               f"{total_steps} steps, ≤ {total_tokens} tokens, "
               f"{sum(len(c.points) for c in cells)} evaluation points")
  return "\n".join(lines)


def show(cells: Sequence[Cell], ids: dict[str, str], refines: bool) -> None:
  """Print the table (and, for an experiment that refines, that more cells may come)."""
  print(table(cells, ids), flush=True)
  if refines:
    print(REFINE_NOTE, flush=True)
