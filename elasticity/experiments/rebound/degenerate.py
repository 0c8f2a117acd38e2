"""The rebound report's check for degenerate continuations (`elasticity.eval.degeneration`).

A classifier's score of a point is evidence about sentiment only when the point's continuations are
text: a run that collapsed into a loop of one word still gets a label (the IMDb classifier rated the
collapsed KTO control of ``docs/results/rebound-algorithms.md`` 0.91 positive). From the saved
continuations (the archive ``generations.jsonl.gz`` beside ``results.jsonl``, or the cells' own
``generations.jsonl``), every evaluated point gets the share of its continuations whose rep-4 is at
least 0.5; the section names each point, per seed, where that share reaches `FLAG` and says that its
score is not evidence, or says that no point did (with the largest share seen).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from elasticity.eval import degeneration
from elasticity.eval import generations as gen_lib
from elasticity.experiments.rebound.rescore import ARCHIVE, read_archive
from elasticity.report.document import Context, Section
from elasticity.report.results import Row
from elasticity.report.tables import markdown_table

FLAG = 0.1        # a point is flagged when this share of its continuations is degenerate


def _texts(workdir: Path, rows: Sequence[Row]) -> dict[tuple[str, str], list[str]]:
  archive = read_archive(workdir / ARCHIVE) if (workdir / ARCHIVE).exists() else {}
  out = {}
  for r in rows:
    path = workdir / "cells" / r.cell / "points" / r.point / "generations.jsonl"
    gens = gen_lib.load(path)[0] if path.exists() else archive.get((r.cell, r.point))
    if gens is not None:
      out[(r.cell, r.point)] = [g["completion"] for g in gens]
  return out


def _arm(r: Row) -> str:
  c = r.coords
  keys = [k for k in ("reverse", "order", "stage", "n_pos", "n_neg") if k in c]
  return ", ".join(f"{k} {c[k]}" for k in keys)


def table(rows: Sequence[Row], workdir: Path) -> tuple[list[dict], int, float]:
  """(the flagged points, how many points had continuations, the largest degenerate share)."""
  texts = _texts(workdir, rows)
  flagged, largest = [], 0.0
  for r in rows:
    if (r.cell, r.point) not in texts:
      continue
    s = degeneration.summary(texts[(r.cell, r.point)])
    if s["texts"] == 0:
      continue
    largest = max(largest, s["degenerate_share"])
    if s["degenerate_share"] >= FLAG:
      flagged.append({"point": _arm(r), "seed": r.seed, "continuations": s["texts"],
                      "degenerate share": f"{s['degenerate_share']:.3g}",
                      f"mean rep-{degeneration.N}": f"{s[f'rep_{degeneration.N}']:.3g}",
                      "score": "–" if r.metric("score") is None else f"{r.metric('score'):.4g}"})
  return flagged, len(texts), largest


def section(rows: Sequence[Row], ctx: Context) -> Section | None:
  """"Degenerate continuations", or ``None`` when no point's continuations were saved."""
  flagged, points, largest = table(rows, ctx.workdir)
  if not points:
    return None
  rule = (f"A continuation is degenerate when at least {degeneration.THRESHOLD:g} of its word "
          f"{degeneration.N}-grams repeat an earlier one (rep-{degeneration.N}, "
          "`elasticity.eval.degeneration`); a point is flagged when "
          f"{FLAG:g} or more of its continuations are.")
  if not flagged:
    return Section("Degenerate continuations",
                   f"{rule} None of the {points} evaluated points is flagged (largest share "
                   f"{largest:.3g}).")
  return Section("Degenerate continuations",
                 f"{rule} **{len(flagged)} of {points} points are flagged: their score measures "
                 "what the scorer makes of repeated words, not sentiment, and is not evidence.**\n\n"
                 + markdown_table(flagged).rstrip())


__all__ = ["section", "table", "FLAG"]
