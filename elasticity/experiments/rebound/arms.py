"""The rebound report's test of elasticity: the arms of one panel compared, every number with a 95%
interval (`elasticity.experiments.rebound.stats`, `elasticity.report.intervals`).

From the rows of a panel (`elasticity.experiments.rebound.report.Panel`) with per-prompt scores
(``score_values``): the stage-1 check per n⁺ (and the flag "stage 1 did not align: rebound not
testable"), then per n⁺ > 0 and stage-2 count n the fraction of the stage-1 gain undone, the
aligned-minus-control difference, the fraction lost under neutral data, the larger n⁺ arm against the
smaller (more stage-1 data, faster rebound?), the n at which each arm is back
at the base level, the four curves (aligned/base × negative/neutral) with intervals, the neutral data's
rating by the scorer (``neutral_check.json``), and Δγ against the score, raw and within n levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from elasticity import atomic
from elasticity.experiments.rebound import stats
from elasticity.report import plots
from elasticity.report.document import Context, Section, image
from elasticity.report.intervals import Interval, fmt_interval, mean_interval
from elasticity.report.tables import markdown_table

NOT_ALIGNED = "stage 1 did not align: rebound not testable"


def _values(rows, **want) -> dict[Any, np.ndarray]:
  """{seed: per-prompt scores} of the rows whose coords match ``want``."""
  out = {}
  for r in rows:
    if all(r.coords.get(k) == v for k, v in want.items()):
      v = r.metrics.get("score_values")
      if isinstance(v, list) and v:
        out[r.seed] = np.asarray(v, dtype=np.float64)
  return out


class Arms:
  """Per-prompt score arrays of one panel, aligned on common seeds (base tiled to every seed)."""

  def __init__(self, panel):
    self.panel = panel
    base = _values(panel.base)
    self.base = next(iter(base.values())) if base else None
    self.rows = list(panel.rows) + list(getattr(panel, "neutral", []))
    self.d = stats.direction(dict(zip(panel.keys, panel.values)).get("order"))

  def curve(self, n_pos: int, neutral: bool = False) -> dict[int, dict[Any, np.ndarray]]:
    """{n: {seed: values}} of an arm, its start at n = 0 (stage 1, or the base for n⁺ = 0)."""
    stage = "neutral" if neutral else "neg"
    out: dict[int, dict[Any, np.ndarray]] = {}
    for r in self.rows:
      if r.coords.get("n_pos") == n_pos and r.coords.get("stage") == stage:
        out.setdefault(int(r.coords["n_neg"]), {}).update(_values([r]))
    if n_pos > 0:
      start = _values(self.rows, n_pos=n_pos, stage="pos")
      if start:
        out[0] = start
    elif self.base is not None:
      out[0] = {None: self.base}
    return out

  def n_pos(self) -> list[int]:
    return sorted({int(r.coords["n_pos"]) for r in self.rows})

  def matrix(self, *groups: dict[Any, np.ndarray]) -> list[np.ndarray] | None:
    """[seeds, prompts] arrays over the seeds common to every group (a seedless group is tiled)."""
    seeded = [set(g) for g in groups if None not in g]
    seeds = sorted(set.intersection(*seeded), key=str) if seeded else [None]
    if not seeds or any(not g for g in groups):
      return None
    out = []
    for g in groups:
      rows = [g[None]] * len(seeds) if None in g else [g[s] for s in seeds]
      if len({len(x) for x in rows}) != 1:
        return None
      out.append(np.stack(rows))
    if len({a.shape for a in out}) != 1:
      return None
    return out


def stage1_table(arms: Arms) -> tuple[list[dict], dict[int, bool]]:
  rows, aligned = [], {}
  for n in arms.n_pos():
    if n == 0 or arms.base is None:
      continue
    m = arms.matrix({None: arms.base}, arms.curve(n).get(0, {}))
    if m is None:
      continue
    chk = stats.stage1_check(m[0], m[1], arms.d)
    aligned[n] = chk["aligned"]
    rows.append({"n⁺": n, "seeds": m[0].shape[0], "prompts": m[0].shape[1],
                 "gain d·(S1 − B)": f"{chk['gain']:.4f}", "paired s.e.": f"{chk['se']:.4f}",
                 "verdict": "aligned (gain ≥ 2 s.e.)" if chk["aligned"] else NOT_ALIGNED})
  return rows, aligned


def statistics_table(arms: Arms, aligned: dict[int, bool]) -> list[dict]:
  """Per n⁺ > 0 and n: undone fraction, aligned − control, neutral fraction lost (intervals)."""
  out = []
  control, base_neu = arms.curve(0), arms.curve(0, neutral=True)
  for n_pos in arms.n_pos():
    if n_pos == 0:
      continue
    neg, neu = arms.curve(n_pos), arms.curve(n_pos, neutral=True)
    for n in sorted(k for k in neg if k > 0):
      row: dict[str, Any] = {"n⁺": n_pos, "n": n,
                             "stage 1": "aligned" if aligned.get(n_pos) else NOT_ALIGNED}
      m = arms.matrix({None: arms.base} if arms.base is not None else {}, neg[0], neg[n])
      row["gain undone (neg)"] = fmt_interval(stats.undone(*m)) if m else "–"
      mc = (arms.matrix({None: arms.base}, neg[0], neg[n], control[n])
            if arms.base is not None and n in control else None)
      if mc:
        vc = stats.versus_control(*mc, d=arms.d)
        row["drop: aligned − control"] = fmt_interval(vc["drop_difference"])
        row["level: aligned − control"] = fmt_interval(vc["level_difference"])
      mn = (arms.matrix({None: arms.base}, neg[0], neu[n]) if arms.base is not None and n in neu
            else None)
      row["gain lost (neutral)"] = fmt_interval(stats.undone(*mn)) if mn else "–"
      mb = (arms.matrix({None: arms.base}, neg[0], neu[n], base_neu[n])
            if arms.base is not None and n in neu and n in base_neu else None)
      row["neutral drop: aligned − base"] = (
          fmt_interval(stats.versus_control(*mb, d=arms.d)["drop_difference"]) if mb else "–")
      out.append(row)
  return out


def dose_table(arms: Arms, aligned: dict[int, bool]) -> list[dict]:
  """Per pair of consecutive n⁺ > 0 levels and n: the larger n⁺ arm against the smaller
  (`stats.dose`, intervals)."""
  out = []
  if arms.base is None:
    return out
  levels = [n for n in arms.n_pos() if n > 0]
  for lo, hi in zip(levels, levels[1:]):
    clo, chi = arms.curve(lo), arms.curve(hi)
    if 0 not in clo or 0 not in chi:
      continue
    for n in sorted(k for k in chi if k > 0 and k in clo):
      m = arms.matrix({None: arms.base}, clo[0], clo[n], chi[0], chi[n])
      if m is None:
        continue
      iv = stats.dose(*m, d=arms.d)
      out.append({"n⁺ low → high": f"{lo} → {hi}", "n": n,
                  "stage 1": ("both aligned" if aligned.get(lo) and aligned.get(hi) else NOT_ALIGNED),
                  "drop: high − low": fmt_interval(iv["drop_difference"]),
                  "gain undone: high − low": fmt_interval(iv["undone_difference"])})
  return out


def crossing_table(arms: Arms) -> list[dict]:
  out = []
  if arms.base is None:
    return out
  for n_pos in arms.n_pos():
    for neutral in (False, True):
      curve = arms.curve(n_pos, neutral)
      if len(curve) < 2:
        continue
      ns = sorted(curve)
      m = arms.matrix({None: arms.base}, *[curve[n] for n in ns])
      if m is None:
        continue
      arm = f"{'base' if n_pos == 0 else f'aligned n⁺={n_pos}'}, {'neutral' if neutral else 'negative'}"
      if n_pos == 0:
        out.append({"arm": arm, "n back at the base level": "starts there"})
        continue
      iv = stats.crossing(m[0], dict(zip(ns, m[1:])), arms.d)
      out.append({"arm": arm, "n back at the base level": fmt_interval(iv)})
  return out


def arm_series(arms: Arms, n_pos: int) -> dict[str, list[tuple[float, Interval]]]:
  """The arms' score curves with 95% intervals: aligned (n⁺) and base × negative and neutral; a
  neutral arm only where it has points after its start (a grid without neutral runs draws two)."""
  series: dict[str, list[tuple[float, Interval]]] = {}
  for start, label in ((n_pos, f"aligned (n⁺={n_pos})"), (0, "base (n⁺=0)")):
    for neutral in (False, True):
      pts = []
      for n, groups in sorted(arms.curve(start, neutral).items()):
        m = arms.matrix(groups)
        if m is not None:
          pts.append((n, mean_interval(m[0])))
      if pts and (not neutral or any(n > 0 for n, _ in pts)):
        series[f"{label}, {'neutral' if neutral else 'negative'}"] = pts
  return series


def four_curves(arms: Arms, ctx: Context, n_pos: int) -> str | None:
  """One plot of `arm_series`, score with 95% intervals."""
  series = arm_series(arms, n_pos)
  if not series:
    return None
  what = {1: "one arm", 2: "two arms", 3: "three arms"}.get(len(series), "four arms")
  base = mean_interval(arms.base) if arms.base is not None else None
  path, ref = ctx.plot(f"arms_score_npos{n_pos}_{arms.panel.name}")
  plots.interval_curves(path, series, xlabel="stage-2 examples n (0 = the arm's start)",
                        ylabel="score (95% interval over prompts and seeds)",
                        title=f"{what}, n⁺={n_pos} — {arms.panel.label}", baseline=base,
                        dashed=[k for k in series if k.endswith("neutral")])
  return image(f"score of the {what} (n⁺={n_pos}), {arms.panel.label}", ref)


def correlation_row(panel) -> dict[str, Any] | None:
  """Δγ against the score over every evaluated point (per seed), raw and within n levels."""
  xs, ys, lv = [], [], []
  for r in [*panel.base, *panel.rows]:
    a, b = r.metric("score"), r.metric("delta_gamma")
    if a is not None and b is not None:
      xs.append(a)
      ys.append(b)
      lv.append(float(r.coords.get("n_neg", 0)) if r.coords.get("stage") == "neg" else -1.0)
  if len(xs) < 3:
    return None
  c = stats.correlation(xs, ys, lv)
  return {**dict(zip(panel.keys, panel.values)), "points": c["points"],
          "r (raw)": fmt_interval(c["raw"]),
          "r within n⁻ levels": fmt_interval(c["within"]) if c["within"] else "–",
          "points within": c["within_points"]}


def neutral_note(ctx: Context) -> str | None:
  path = ctx.workdir / "neutral_check.json"
  if not path.exists():
    return None
  n = atomic.read_json(path)
  head = ("The neutral data" if n["neutral"] else
          "**NOT NEUTRAL — the neutral arm's data is rated outside the neutral band; its curves "
          "cannot separate a spring from a pull.** The neutral data")
  return (f"{head} ({n['dataset']}, {n['texts']} texts) is rated {n['mean']:.3f} ± {n['se']:.3f} "
          f"(s.e.) by the scorer (neutral band {n['midpoint']:g} ± {n['tolerance']:g}).")


def sections(panel_list: Sequence, ctx: Context) -> list[Section]:
  out = []
  note = neutral_note(ctx)
  corr = [c for p in panel_list if (c := correlation_row(p)) is not None]
  if corr:
    out.append(Section(
        "Δγ against the classifier's score, raw and within n⁻ levels",
        "Pearson r over the evaluated points (one per seed and grid point), with 95% intervals from "
        "resampling the points. The raw r includes the trend both metrics share in n⁻; the within-level "
        "r subtracts each n⁻ level's mean from both (a partial correlation on n⁻): only it says "
        "whether Δγ tracks the classifier beyond that shared trend.\n\n" + markdown_table(corr)))
  for panel in panel_list:
    arms = Arms(panel)
    if arms.base is None:
      continue
    s1, aligned = stage1_table(arms)
    body = []
    if note:
      body.append(note)
    if s1:
      body.append("**Stage-1 check** (score gain over the base, paired over prompts):\n\n"
                  + markdown_table(s1).rstrip())
      if not all(aligned.values()):
        body.append(f"**{NOT_ALIGNED}** for n⁺ ∈ {sorted(n for n, a in aligned.items() if not a)}.")
    st = statistics_table(arms, aligned)
    if st:
      body.append("**Rebound statistics** (95% bootstrap intervals over prompts and seeds): the "
                  "fraction of the stage-1 gain undone by n negative examples, the aligned arm's drop "
                  "from its own start minus the control's (positive: the aligned model moves more "
                  "than the base under the same data), their level difference, and the fraction of "
                  "the gain lost under n neutral examples (a spring predicts > 0, a pull ≈ 0), and the "
                  "aligned arm's drop under neutral data minus the base's (the base's own drift "
                  "removed; a pull in proportion to the distance from the data's level also makes "
                  "it positive, so it decides only where the data's rating is near the base's).\n\n"
                  + markdown_table(st).rstrip())
    dt = dose_table(arms, aligned)
    if dt:
      body.append("**More stage-1 data, faster rebound?** (the paper's §5.2: the curves for larger n⁺ "
                  "fall faster) The larger n⁺ arm's drop from its own start minus the smaller's after "
                  "the same n, and the difference of their fractions of the gain undone (positive: "
                  "the larger n⁺ falls more; 95% intervals over prompts and seeds):\n\n"
                  + markdown_table(dt).rstrip())
    cr = crossing_table(arms)
    if cr:
      body.append("**Back at the base level** (n interpolated; ∞: not reached):\n\n"
                  + markdown_table(cr).rstrip())
    for n_pos in arms.n_pos():
      if n_pos > 0 and (img := four_curves(arms, ctx, n_pos)):
        body.append(img)
    if body:
      out.append(Section(f"Elasticity test: {panel.label}", "\n\n".join(body)))
  return out



__all__ = ["Arms", "NOT_ALIGNED", "arm_series", "correlation_row", "crossing_table", "dose_table",
           "four_curves", "neutral_note", "sections", "stage1_table", "statistics_table"]
