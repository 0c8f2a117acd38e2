"""Report figures (matplotlib, Agg canvas, no pyplot state): curves with error bars and heatmaps.

matplotlib is imported when a figure is drawn, not with this module (it reads its config and font
cache on import), so a report package that only makes tables stays light.

Each function renders one PNG and writes it through `elasticity.atomic`, so a reader never sees half
an image. Values come in as `Stat` (mean, s.d., n) from `elasticity.report.results`; an s.d. of
``None`` (a single seed) draws no error bar.

Curves against a count that includes 0 (n⁻ = 0 is the model after stage 1) use a symmetric-log x-axis
whose linear part ends at the smallest positive count: 0 sits one decade's width to the left of it,
and the positive counts are on a log scale.
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from elasticity import atomic
from elasticity.report.results import Stat

DPI = 110


def _wrap(title: str) -> str:
  """A title in lines that fit the figure (a panel's label can be longer than its width)."""
  return "\n".join(textwrap.wrap(title, 64))


def save(fig, path: str | os.PathLike) -> Path:
  """Render ``fig`` (a matplotlib ``Figure``) as PNG into ``path`` atomically."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  FigureCanvasAgg(fig)
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
  return atomic.write_bytes(path, buf.getvalue())


def _count_axis(ax, xs: Sequence[float]) -> None:
  """Log x-axis over counts; symlog with 0 one decade left of the smallest positive count."""
  xs = sorted(set(xs))
  positive = [x for x in xs if x > 0]
  if not positive:
    ax.set_xlim(-1, 1)
  elif xs[0] <= 0:
    ax.set_xscale("symlog", linthresh=positive[0], linscale=1.0)
  else:
    ax.set_xscale("log")
  ax.set_xticks(xs, [f"{x:g}" for x in xs], rotation=45 if len(xs) > 6 else 0)
  ax.minorticks_off()
  ax.margins(x=0.05)
  ax.autoscale_view()


def curves(path: str | os.PathLike, series: Mapping[str, Sequence[tuple[float, Stat]]], *,
           xlabel: str, ylabel: str, title: str, baseline: Stat | None = None,
           baseline_label: str = "base model",
           hlines: Sequence[tuple[float, str]] = (), ylinthresh: float | None = None,
           xscale: str = "count") -> Path:
  """One line (with ±s.d. error bars) per series against a count axis.

  series: ``{label: [(x, Stat), ...]}``; baseline: drawn dashed across the plot (its s.d. shaded);
  hlines: extra dotted reference lines ``(y, label)``, e.g. a KL threshold; ylinthresh: a symmetric-log
  y-axis, linear below this value (for a KL that falls by orders of magnitude towards 0);
  xscale: ``"count"`` (log, with 0 placed by symlog, ticks at the data) or ``"linear"`` (e.g. steps).
  """
  if xscale not in ("count", "linear"):
    raise ValueError(f"xscale must be 'count' or 'linear', got {xscale!r}")
  if not any(series.values()):
    raise ValueError(f"{path}: no points to plot")
  from matplotlib.figure import Figure
  fig = Figure(figsize=(6.4, 4.2))
  ax = fig.subplots()
  xs_all: list[float] = []
  for label, points in series.items():
    points = sorted(points, key=lambda p: p[0])
    if not points:
      continue
    xs = [p[0] for p in points]
    ys = [p[1].mean for p in points]
    err = [p[1].sd or 0.0 for p in points]
    xs_all += xs
    ax.errorbar(xs, ys, yerr=err if any(err) else None, marker="o", ms=4, capsize=3, label=label)
  if baseline is not None:
    ax.axhline(baseline.mean, ls="--", color="0.35", lw=1.2, label=baseline_label)
    if baseline.sd:
      ax.axhspan(baseline.mean - baseline.sd, baseline.mean + baseline.sd, color="0.35", alpha=0.12)
  for y, label in hlines:
    ax.axhline(y, ls=":", color="tab:red", lw=1.2, label=label)
  if ylinthresh is not None:
    ax.set_yscale("symlog", linthresh=ylinthresh)
  if xscale == "count":
    _count_axis(ax, xs_all)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(_wrap(title), fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return save(fig, path)


def heatmap(path: str | os.PathLike, values: Mapping[tuple[float, float], Stat], *, xlabel: str,
            ylabel: str, title: str, cbar_label: str) -> Path:
  """A grid of means over ``{(y, x): Stat}`` (rows y, columns x, both sorted; empty cells blank),
  each cell annotated with its mean."""
  if not values:
    raise ValueError(f"{path}: no cells to plot")
  ys = sorted({k[0] for k in values})
  xs = sorted({k[1] for k in values})
  grid = np.full((len(ys), len(xs)), np.nan)
  for (y, x), stat in values.items():
    grid[ys.index(y), xs.index(x)] = stat.mean
  from matplotlib.figure import Figure
  fig = Figure(figsize=(1.2 + 0.9 * len(xs), 1.4 + 0.6 * len(ys)))
  ax = fig.subplots()
  finite = grid[np.isfinite(grid)]
  lo, hi = float(finite.min()), float(finite.max())
  if lo == hi:
    lo, hi = lo - 0.5, hi + 0.5
  im = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", vmin=lo, vmax=hi, aspect="auto",
                 origin="lower")
  for i in range(len(ys)):
    for j in range(len(xs)):
      v = grid[i, j]
      if math.isfinite(v):
        dark = (v - lo) / (hi - lo) < 0.5
        ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize=8,
                color="white" if dark else "black")
  ax.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
  ax.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(_wrap(title), fontsize=10)
  fig.colorbar(im, ax=ax, label=cbar_label)
  fig.tight_layout()
  return save(fig, path)


def interval_curves(path: str | os.PathLike, series: Mapping[str, Sequence[tuple[float, object]]], *,
                    xlabel: str, ylabel: str, title: str, baseline=None,
                    baseline_label: str = "base model", dashed: Sequence[str] = (),
                    hlines: Sequence[tuple[float, str]] = (), ylinthresh: float | None = None) -> Path:
  """One line per series with asymmetric 95% interval bars (`elasticity.report.intervals.Interval`:
  ``estimate``, ``lo``, ``hi``) against a count axis; ``baseline`` (an Interval) dashed with its interval
  shaded; series named in ``dashed`` drawn dashed (e.g. the neutral arms); ``hlines`` and
  ``ylinthresh`` as in `curves`."""
  if not any(series.values()):
    raise ValueError(f"{path}: no points to plot")
  from matplotlib.figure import Figure
  fig = Figure(figsize=(6.4, 4.2))
  ax = fig.subplots()
  xs_all: list[float] = []
  for label, points in series.items():
    points = sorted(points, key=lambda p: p[0])
    if not points:
      continue
    xs = [p[0] for p in points]
    ys = np.array([p[1].estimate for p in points])
    lo = np.array([p[1].lo for p in points])
    hi = np.array([p[1].hi for p in points])
    xs_all += xs
    ax.errorbar(xs, ys, yerr=np.vstack([ys - lo, hi - ys]).clip(min=0), marker="o", ms=4, capsize=3,
                label=label, ls="--" if label in dashed else "-")
  if baseline is not None:
    ax.axhline(baseline.estimate, ls=":", color="0.35", lw=1.2, label=baseline_label)
    ax.axhspan(baseline.lo, baseline.hi, color="0.35", alpha=0.12)
  for y, label in hlines:
    ax.axhline(y, ls=":", color="tab:red", lw=1.2, label=label)
  if ylinthresh is not None:
    ax.set_yscale("symlog", linthresh=ylinthresh)
  _count_axis(ax, xs_all)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(_wrap(title), fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  return save(fig, path)
