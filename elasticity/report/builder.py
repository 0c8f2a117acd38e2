"""An experiment folder's report, regenerated from its results alone.

    from elasticity.report import build_report
    build_report("runs/rebound")     # -> runs/rebound/report.md, plots/*.png, results.csv

Reads ``DIR/results.jsonl`` (and any ``DIR/results.*.jsonl``, e.g. shards of one grid written on
several machines, merged) and ``DIR/experiment.json`` if present. Rows are grouped by their
``experiment`` field and each group goes to its builder in `REPORTS` (``build(rows, ctx) ->
[Section]``, see `elasticity.report.document`); an experiment without one gets `build_generic`, a
table of every row. Rows without metrics are skipped (and logged) before any builder sees them;
``results.csv`` still lists every row.

The plots are rendered into a temporary folder that replaces ``DIR/plots`` as a whole (stale PNGs of
an earlier report do not linger), then ``report.md`` is written; every file goes through
`elasticity.atomic`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from absl import logging

from elasticity import atomic
from elasticity.report.document import Builder, Context, Section, render
from elasticity.report.rebound import build_rebound
from elasticity.report.resistance import build_resistance
from elasticity.report.scaling import build_scaling
from elasticity.report.results import ResultsError, Row, load_rows, read_experiment, with_metrics
from elasticity.report.tables import markdown_table, write_csv

RESULTS = "results.jsonl"


def build_generic(rows: Sequence[Row], ctx: Context) -> list[Section]:
  """Every row as one flat table (identity, coordinates, scalar metrics)."""
  del ctx
  return [Section("All rows", markdown_table([r.flat() for r in rows]))]


def _theory_lab(rows, ctx):
  from elasticity.theory import lab_report
  return [s for b in lab_report.BUILDERS for s in b(rows, ctx)]


REPORTS: dict[str, Builder] = {"rebound": build_rebound, "resistance": build_resistance,
                               "scaling": build_scaling, "theory_lab": _theory_lab}


def results_files(workdir: str | os.PathLike) -> list[Path]:
  """``results.jsonl`` then any ``results.*.jsonl`` shards, sorted; the first must exist."""
  workdir = Path(workdir)
  main = workdir / RESULTS
  if not main.is_file() and not any(workdir.glob("results.*.jsonl")):
    raise ResultsError(f"{main}: no such results file (is --workdir an experiment folder?)")
  return [p for p in [main] if p.is_file()] + sorted(workdir.glob("results.*.jsonl"))


def build_report(workdir: str | os.PathLike, *, title: str | None = None) -> Path:
  """Regenerate ``report.md``, ``plots/`` and ``results.csv`` in ``workdir``; returns report.md."""
  workdir = Path(workdir)
  files = results_files(workdir)
  rows = load_rows(files)
  exp_file = workdir / "experiment.json"
  experiment = read_experiment(exp_file)
  if rows:
    write_csv(workdir / "results.csv", [r.flat() for r in rows])
  else:
    atomic.write_text(workdir / "results.csv", "")
  measured = with_metrics(rows)
  groups: dict[str, list[Row]] = {}
  for row in measured:
    groups.setdefault(row.experiment, []).append(row)

  sections: list[Section] = []
  with atomic.directory(workdir / "plots") as tmp:
    ctx = Context(workdir=workdir, plots_dir=tmp, experiment=experiment, experiment_file=exp_file)
    for name, group in groups.items():
      builder = REPORTS.get(name, build_generic)
      if builder is build_generic:
        logging.warning("no report builder for experiment %r; writing a table of its rows", name)
      built = builder(group, ctx)
      if len(groups) > 1:
        built = [Section(f"{name}: {s.title}", s.body) for s in built]
      sections += built
  if not sections:
    sections = [Section("No results yet", "No row with metrics in " +
                        ", ".join(f"`{p.name}`" for p in files) + ".")]

  name = experiment.get("name") or ", ".join(groups) or "experiment"
  variant = experiment.get("variant")
  preamble = [f"- experiment: `{name}`" + (f", variant `{variant}`" if variant else ""),
              f"- rows: {len(rows)} ({len(rows) - len(measured)} without metrics skipped), cells: "
              f"{len({r.cell for r in rows})}, seeds: "
              f"{', '.join(str(s) for s in sorted({r.seed for r in rows if r.seed is not None}))}",
              f"- from: {', '.join(f'`{p.name}`' for p in files)}; all rows in `results.csv`"]
  if experiment.get("git_commit"):
    preamble.append(f"- git commit: `{experiment['git_commit']}`")
  text = render(title or f"{name}" + (f" — {variant}" if variant else ""), preamble, sections)
  path = atomic.write_text(workdir / "report.md", text)
  logging.info("wrote %s (%d sections, %d plots)", path, len(sections), len(ctx.plots))
  return path
