"""Scaling (paper §5.3, Figs. 5–6): each model's **rebound speed** from the rows of its rebound grid.

The config (``configs/experiments/scaling.py``) holds one rebound config (``config.rebound``, every
key of ``configs/experiments/rebound.py``) and ``config.models``: key → {name, path, tokenizer,
params, tokens} (parameters, pre-training tokens; either may be 0 when unknown). Each model's grid is the
rebound grid with its cells named ``<model>/<cell>``; the rows carry ``coords.model``.

**Rebound speed.** For a model, a seed and an n⁺, with S the score metric (``config.speed.metric``,
``auto`` by default: the classifier's ``score`` where the rows have one, else ``delta_gamma``, which
needs no scorer; `elasticity.experiments.scaling.report.resolve_metric`), S0 its value at the base model, S1 after stage 1
(n⁻ = 0) and S(n) after n negative examples, the *undone fraction* is

    r(n) = (S1 − S(n)) / (S1 − S0)          (0: still aligned as after stage 1; 1: back at the base)

and the model's

- ``speed`` = the mean of r(n) over the first ``config.speed.first_points`` positive n⁻ of the grid
  (how much of the alignment the first few negative examples undo: the paper's "faster rebound");
- ``half_n`` = the smallest n⁻ at which r reaches 1/2, linearly interpolated between the grid points
  around the first crossing (r(0) = 0); ``None`` if it never does.

`rebound_speed` computes both from results rows per (model, n⁺) as mean ± s.d. over seeds; it reads
nothing but the rows, so the theory lab's synthetic worlds can use it on their own rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any


def undone_fraction(s0: float, s1: float, s: float) -> float:
  """r = (S1 − S) / (S1 − S0); NaN when stage 1 did not move the score (S1 = S0)."""
  d = s1 - s0
  return (s1 - s) / d if d != 0 else math.nan


def half_point(curve: Sequence[tuple[float, float]], level: float = 0.5) -> float | None:
  """The first n at which r(n) ≥ ``level`` along ``curve`` [(n, r)], sorted by n, starting at (0, 0);
  linearly interpolated between the points around the crossing."""
  pts = sorted(curve)
  prev = (0.0, 0.0)
  for n, r in pts:
    if math.isnan(r):
      continue
    if r >= level:
      (n0, r0) = prev
      if r == r0:
        return float(n)
      return float(n0 + (level - r0) * (n - n0) / (r - r0))
    prev = (n, r)
  return None


def _metric(row: Mapping[str, Any], name: str) -> float | None:
  v = row.get("metrics", {}).get(name)
  return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _coords(row) -> Mapping[str, Any]:
  return row["coords"] if isinstance(row, Mapping) else row.coords


def rebound_speed(rows: Iterable[Mapping[str, Any]], *, metric: str = "delta_gamma",
                  first_points: int = 1) -> list[dict[str, Any]]:
  """Per (model, n⁺): ``speed`` and ``half_n`` (module docstring), each as {mean, sd, n} over seeds,
  and the per-seed values. ``rows`` are results.jsonl rows (dicts)."""
  if first_points < 1:
    raise ValueError(f"rebound_speed: first_points must be >= 1, got {first_points}")
  base: dict[str, list[float]] = {}
  points: dict[tuple, dict[int, float]] = {}
  for r in rows:
    co, v = r["coords"], _metric(r, metric)
    if v is None:
      continue
    model = co.get("model")
    if co.get("stage") == "base":
      base.setdefault(model, []).append(v)
    elif co.get("stage") in ("pos", "neg"):
      points.setdefault((model, int(co["n_pos"]), r.get("seed")), {})[int(co["n_neg"])] = v
  out: dict[tuple, dict[str, list]] = {}
  for (model, n_pos, seed), series in sorted(points.items(), key=lambda kv: tuple(map(str, kv[0]))):
    if model not in base or 0 not in series:
      continue
    s0 = sum(base[model]) / len(base[model])
    s1 = series[0]
    curve = [(n, undone_fraction(s0, s1, s)) for n, s in sorted(series.items()) if n > 0]
    early = [r for _, r in curve[:first_points]]
    entry = out.setdefault((model, n_pos), {"speed": [], "half_n": [], "seeds": []})
    entry["speed"].append(sum(early) / len(early) if early else math.nan)
    entry["half_n"].append(half_point(curve))
    entry["seeds"].append(seed)
  result = []
  for (model, n_pos), e in out.items():
    result.append({"model": model, "n_pos": n_pos, "speed": _stat(e["speed"]),
                   "half_n": _stat([h for h in e["half_n"] if h is not None]),
                   "half_n_reached": sum(h is not None for h in e["half_n"]),
                   "per_seed": [{"seed": s, "speed": sp, "half_n": h}
                                for s, sp, h in zip(e["seeds"], e["speed"], e["half_n"])]})
  return result


def _stat(values: Sequence[float]) -> dict[str, float | int | None] | None:
  vals = [float(v) for v in values if v is not None and not math.isnan(v)]
  if not vals:
    return None
  n = len(vals)
  mean = math.fsum(vals) / n
  sd = math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) if n > 1 else None
  return {"mean": mean, "sd": sd, "n": n}
