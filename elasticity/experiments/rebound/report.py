"""The rebound report (§5.2, App. B.2, Table 3): curves, heatmaps and the KL-to-base table.

Rows (see `elasticity.report.results.Row`) carry ``coords`` ``n_pos``, ``n_neg`` and ``stage``
(``base``: the pretrained model, n_pos = n_neg = 0; then the stage-1 model and the stage-2 points),
plus any other coordinates (model, task, reverse, order, ...). Every distinct value of those other
coordinates is one **panel**; the base row joins each panel whose coordinates it does not contradict
(a base row without ``reverse`` belongs to every reverse algorithm's panel).

With ``order = pos_first`` (the default) stage 1 trains on n⁺ positive examples and stage 2 on n⁻
negative ones: a curve is one n⁺, against n⁻ (n⁻ = 0 is the stage-1 model). With ``neg_first`` the
roles swap: one curve per n⁻, against n⁺.

Per panel: curves of each metric in `CURVE_METRICS` that was measured (each point with its 95%
bootstrap interval: over seeds and prompts for the score, over seeds otherwise; the base model's level
dotted), a heatmap (stage-1 count × stage-2 count) of each of `HEATMAP_METRICS`,
a table of every point, and the agreement of Δγ with the classifier's score (Pearson r over the
points' means). Rows of the neutral arm (``stage = "neutral"``) join their panel as ``Panel.neutral``,
apart from the curves above; `elasticity.experiments.rebound.arms` compares the arms (control, neutral)
with 95% intervals and adds the "Elasticity test" sections. Across panels, the **Table 3** view: per panel and stage-1 count, the KL to the base
after stage 1, and the smallest stage-2 count whose ``kl_to_base`` is under the threshold
(``config.report.kl_threshold`` in experiment.json, default 0.01) among the rows present — grid and
bisection rows alike. It is found per seed and reported as mean ± s.d. over the seeds that reached
it, with how many did; "not reached" when none did. First of all, "Scorers and the reverse step"
(`elasticity.experiments.rebound.provenance`) says which scorer made every number and what the reverse
step was, with its reward's sign; then "Degenerate continuations"
(`elasticity.experiments.rebound.degenerate`) flags the points whose saved continuations repeat
themselves, whose score is not evidence.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from elasticity.experiments.rebound import arms, degenerate, provenance
from elasticity.experiments.rebound.rescore import export_generations
from elasticity.report import plots
from elasticity.report.document import Context, Section, image
from elasticity.report.intervals import mean_interval, seed_interval
from elasticity.report.results import (ResultsError, Row, Stat, aggregate, coord_key, fmt,
                                       mean_sd, metric_names, report_option)
from elasticity.report.tables import markdown_table

STAGES = ("base", "pos", "neg", "neutral")
ORDERS = ("pos_first", "neg_first")
GRID_KEYS = ("n_pos", "n_neg", "stage")
# (metric, axis label); plotted when measured.
CURVE_METRICS = (
    ("score", "score (classifier or cost model)"),
    ("p_positive", "mean P(positive)"),
    ("delta_gamma", "Δγ = bits/byte(neg) − bits/byte(pos)"),
    ("kl_to_base", "KL(π ‖ π_base) per token"),
)
HEATMAP_METRICS = ("score", "delta_gamma")
DEFAULT_KL_THRESHOLD = 0.01


@dataclasses.dataclass(frozen=True)
class Roles:
  """Which count is stage 1's (one curve each) and which stage 2's (the x-axis), for an order."""
  first: str
  second: str

  @property
  def first_label(self) -> str:
    return "n⁺" if self.first == "n_pos" else "n⁻"

  @property
  def second_label(self) -> str:
    return "n⁻" if self.second == "n_neg" else "n⁺"


def roles(order: Any) -> Roles:
  return Roles("n_neg", "n_pos") if order == "neg_first" else Roles("n_pos", "n_neg")


def validate(row: Row) -> None:
  """The rebound coordinates of one row: counts are non-negative integers, stage is known, and the
  base row has n_pos = n_neg = 0; errors name the row's file, line and field."""
  for key in ("n_pos", "n_neg"):
    v = row.coords.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
      raise ResultsError(f"{row.source}: field 'coords.{key}': expected a non-negative integer, "
                         f"got {v!r}")
  stage = row.coords.get("stage")
  if stage not in STAGES:
    raise ResultsError(f"{row.source}: field 'coords.stage': expected one of {STAGES}, got {stage!r}")
  if stage == "base" and (row.coords["n_pos"], row.coords["n_neg"]) != (0, 0):
    raise ResultsError(f"{row.source}: field 'coords.stage': a base row must have n_pos = n_neg = 0, "
                       f"got n_pos={row.coords['n_pos']}, n_neg={row.coords['n_neg']}")
  order = row.coords.get("order")
  if order is not None and order not in ORDERS:
    raise ResultsError(f"{row.source}: field 'coords.order': expected one of {ORDERS}, got {order!r}")


@dataclasses.dataclass
class Panel:
  """The rows of one value of the non-grid coordinates, and the base rows that belong to it."""
  keys: tuple[str, ...]
  values: tuple
  rows: list[Row]
  base: list[Row]
  neutral: list[Row] = dataclasses.field(default_factory=list)

  @property
  def roles(self) -> Roles:
    return roles(dict(zip(self.keys, self.values)).get("order"))

  @property
  def label(self) -> str:
    return ", ".join(f"{k}={v}" for k, v in zip(self.keys, self.values)) or "all rows"

  @property
  def name(self) -> str:
    return "-".join(str(v) for v in self.values) or "all"

  def points(self, metric: str) -> dict[tuple, Stat]:
    """``{(stage-1 count, stage-2 count): Stat}`` of ``metric`` over seeds (stage 1 and 2 rows)."""
    r = self.roles
    return aggregate(self.rows, (r.first, r.second), metric)

  def base_level(self, metric: str) -> Stat | None:
    return mean_sd([v for row in self.base if (v := row.metric(metric)) is not None])


def panels(rows: Sequence[Row]) -> list[Panel]:
  """The rows split into panels, in first-seen order; base rows attached to every panel they fit."""
  for row in rows:
    validate(row)
  trained = [r for r in rows if r.coords["stage"] in ("pos", "neg")]
  neutral = [r for r in rows if r.coords["stage"] == "neutral"]
  base = [r for r in rows if r.coords["stage"] == "base"]
  keys: list[str] = []
  for row in trained:
    keys.extend(k for k in row.coords if k not in GRID_KEYS and k != "seed" and k not in keys)
  out: dict[tuple, Panel] = {}
  for row in trained:
    values = coord_key(row, keys)
    out.setdefault(values, Panel(tuple(keys), values, [], [])).rows.append(row)
  if not out and base:      # only a base model so far: one panel around it
    out[()] = Panel((), (), [], [])
  for panel in out.values():
    want = dict(zip(panel.keys, panel.values))
    panel.base = [b for b in base
                  if all(b.coords.get(k) in (None, v) for k, v in want.items())]
    panel.neutral = [r for r in neutral if coord_key(r, panel.keys) == panel.values]
  return list(out.values())


def kl_threshold(ctx: Context) -> float:
  value = report_option(ctx.experiment, "kl_threshold", DEFAULT_KL_THRESHOLD,
                        source=str(ctx.experiment_file))
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
      math.isfinite(value) and value > 0):
    raise ResultsError(f"{ctx.experiment_file}: field 'config.report.kl_threshold': expected a "
                       f"positive number, got {value!r}")
  return float(value)


def crossing(points: Sequence[tuple[int, float]], threshold: float) -> int | None:
  """The smallest count whose KL is under ``threshold`` (strictly), or ``None``."""
  under = [n for n, kl in points if kl < threshold]
  return min(under) if under else None


def table3(panel_list: Sequence[Panel], threshold: float) -> list[dict[str, Any]]:
  """Table 3 rows: per panel and stage-1 count, the KL to base after stage 1 (mean ± s.d. over
  seeds), and the smallest stage-2 count with ``kl_to_base < threshold`` (found per seed)."""
  out = []
  for panel in panel_list:
    r = panel.roles
    by_first: dict[int, dict[Any, list[tuple[int, float]]]] = {}
    for row in panel.rows:
      kl = row.metric("kl_to_base")
      if kl is not None:
        by_first.setdefault(row.coords[r.first], {}).setdefault(row.seed, []).append(
            (row.coords[r.second], kl))
    for n1 in sorted(by_first):
      seeds = by_first[n1]
      after = mean_sd([kl for pts in seeds.values() for n2, kl in pts if n2 == 0])
      reached = [c for pts in seeds.values() if (c := crossing(pts, threshold)) is not None]
      row = dict(zip(panel.keys, panel.values))
      row[r.first_label] = n1
      row["KL to base after stage 1"] = fmt(after)
      row[f"{r.second_label} for KL < {threshold:g}"] = (
          fmt(mean_sd(reached), digits=1) if reached else "not reached")
      row["seeds reached"] = f"{len(reached)}/{len(seeds)}"
      out.append(row)
  return out


def point_table(panel: Panel, metrics: Sequence[str]) -> list[dict[str, Any]]:
  """Every point of a panel (base first), each metric as mean ± s.d. over seeds, and the seeds."""
  r = panel.roles
  stats = {m: panel.points(m) for m in metrics}
  seeds: dict[tuple, set] = {}
  stage: dict[tuple, str] = {}
  for row in panel.rows:
    key = coord_key(row, (r.first, r.second))
    seeds.setdefault(key, set()).add(row.seed)
    stage[key] = row.coords["stage"]
  out = []
  if panel.base:
    out.append({r.first_label: 0, r.second_label: 0, "stage": "base",
                "seeds": len({b.seed for b in panel.base}),
                **{m: fmt(panel.base_level(m)) for m in metrics}})
  for key in sorted(seeds):
    out.append({r.first_label: key[0], r.second_label: key[1], "stage": stage[key],
                "seeds": len(seeds[key]), **{m: fmt(stats[m].get(key)) for m in metrics}})
  return out


def neutral_table(panel: Panel, metrics: Sequence[str]) -> list[dict[str, Any]]:
  """The neutral arm's points (start n⁺ × budget n), each metric as mean ± s.d. over seeds."""
  stats = {m: aggregate(panel.neutral, ("n_pos", "n_neg"), m) for m in metrics}
  keys = sorted({coord_key(r, ("n_pos", "n_neg")) for r in panel.neutral})
  return [{"from n⁺": k[0], "neutral n": k[1], **{m: fmt(stats[m].get(k)) for m in metrics}}
          for k in keys]


def pearson(xs: Sequence[float], ys: Sequence[float]) -> float | None:
  """Pearson's r, or ``None`` for fewer than 3 points or a constant series."""
  n = len(xs)
  if n < 3:
    return None
  mx, my = math.fsum(xs) / n, math.fsum(ys) / n
  sxy = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys))
  sxx = math.fsum((x - mx) ** 2 for x in xs)
  syy = math.fsum((y - my) ** 2 for y in ys)
  if sxx == 0 or syy == 0:
    return None
  return sxy / math.sqrt(sxx * syy)


def agreement(panel: Panel, a: str = "score", b: str = "delta_gamma") -> dict[str, Any] | None:
  """Pearson r between the point means of metrics ``a`` and ``b`` (stage 1 and 2 points, plus the
  base), or ``None`` when either is missing."""
  pa, pb = panel.points(a), panel.points(b)
  keys = sorted(set(pa) & set(pb))
  xs = [pa[k].mean for k in keys]
  ys = [pb[k].mean for k in keys]
  ba, bb = panel.base_level(a), panel.base_level(b)
  if ba is not None and bb is not None:
    xs.append(ba.mean)
    ys.append(bb.mean)
  if not xs:
    return None
  r = pearson(xs, ys)
  return {**dict(zip(panel.keys, panel.values)), "points": len(xs),
          f"Pearson r ({a}, {b})": "–" if r is None else f"{r:.3f}"}


def point_interval(rows: Sequence[Row], metric: str):
  """A point's 95% interval: over seeds and prompts for the score when every row kept its per-prompt
  values, else over seeds (zero width for one seed); ``None`` when the metric is absent."""
  vals = [v for r in rows if (v := r.metric(metric)) is not None]
  if not vals:
    return None
  if metric == "score":
    per = [r.metrics.get("score_values") for r in rows]
    if all(isinstance(p, list) and p for p in per) and len({len(p) for p in per}) == 1:
      return mean_interval(np.asarray(per, dtype=np.float64))
  return seed_interval(vals)


def _curve_plots(panel: Panel, ctx: Context, threshold: float) -> list[str]:
  r = panel.roles
  lines = []
  for metric, ylabel in CURVE_METRICS:
    groups: dict[tuple, list[Row]] = {}
    for row in panel.rows:
      if row.metric(metric) is not None:
        groups.setdefault(coord_key(row, (r.first, r.second)), []).append(row)
    if not groups:
      continue
    series: dict[str, list] = {}
    for (n1, n2), rs in sorted(groups.items()):
      series.setdefault(f"{r.first_label} = {n1}", []).append((n2, point_interval(rs, metric)))
    path, ref = ctx.plot(f"{metric}_{panel.name}")
    plots.interval_curves(path, series, xlabel=f"{r.second_label} (stage-2 examples; 0 = after stage 1)",
                          ylabel=f"{ylabel}, 95% interval", title=f"{metric} — {panel.label}",
                          baseline=point_interval(panel.base, metric),
                          **({"hlines": [(threshold, f"threshold {threshold:g}")],
                              "ylinthresh": threshold} if metric == "kl_to_base" else {}))
    lines.append(image(f"{metric} against {r.second_label} (95% intervals), {panel.label}", ref))
  for metric in HEATMAP_METRICS:
    pts = panel.points(metric)
    if not pts:
      continue
    path, ref = ctx.plot(f"heatmap_{metric}_{panel.name}")
    plots.heatmap(path, pts, xlabel=r.second_label, ylabel=r.first_label,
                  title=f"{metric} — {panel.label}", cbar_label=metric)
    lines.append(image(f"heatmap of {metric}, {r.first_label} × {r.second_label}, {panel.label}", ref))
  return lines


def build_rebound(rows: Sequence[Row], ctx: Context) -> list[Section]:
  """The rebound report's sections (plots written under ``ctx``); writes ``generations.jsonl.gz``
  beside the rows when the cells' generations are there (`rescore.export_generations`)."""
  threshold = kl_threshold(ctx)
  if (ctx.workdir / "results.jsonl").exists() and (ctx.workdir / "cells").is_dir():
    export_generations(ctx.workdir)
  panel_list = panels(rows)
  sections = [s for s in [provenance.section(ctx.experiment), degenerate.section(rows, ctx)]
              if s is not None]
  t3 = table3(panel_list, threshold)
  if t3:
    sections.append(Section(
        f"KL to base (Table 3 style, threshold {threshold:g})",
        "KL to the base model after stage 1, and the smallest stage-2 count whose KL to the base "
        f"is under {threshold:g} among the evaluated points (grid and bisection), found per seed "
        "(mean ± s.d. over the seeds that reached it).\n\n" + markdown_table(t3)))
  agree = [a for p in panel_list if (a := agreement(p)) is not None]
  if agree:
    sections.append(Section(
        "Δγ against the classifier's score (point means)",
        "Pearson correlation of the two metrics' means over the evaluated points of each panel "
        "(positive: the compression-rate preference moves with the classifier; it includes the trend "
        "both share in n⁻, see the within-level r below).\n\n" + markdown_table(agree)))
  sections.extend(arms.sections(panel_list, ctx))
  for panel in panel_list:
    metrics = metric_names([*panel.base, *panel.rows])
    body = []
    if metrics:
      body.append(markdown_table(point_table(panel, metrics)).rstrip())
    if panel.neutral and metrics:
      body.append("Neutral arm (stage 2 on data without sentiment, same budget and schedule):\n\n"
                  + markdown_table(neutral_table(panel, metrics)).rstrip())
    body += _curve_plots(panel, ctx, threshold)
    sections.append(Section(f"Rebound: {panel.label}", "\n\n".join(body) or "no metrics"))
  return sections


__all__ = ["build_rebound", "panels", "table3", "point_table", "agreement", "crossing", "pearson",
           "kl_threshold", "Panel", "Roles", "roles", "validate", "CURVE_METRICS", "HEATMAP_METRICS"]
