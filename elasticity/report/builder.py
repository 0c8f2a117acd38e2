"""An experiment folder's report, regenerated from its results alone.

    from elasticity.report.builder import build_report
    build_report("runs/rebound", {"rebound": build_rebound})   # -> report.md, plots/*.png, results.csv

(`elasticity.experiments.build_report` calls it with every registered experiment's builder.)

Reads ``DIR/results.jsonl`` (and any ``DIR/results.*.jsonl``, e.g. shards of one grid written on
several machines, merged) and ``DIR/experiment.json`` if present. Rows are grouped by their
``experiment`` field and each group goes to its builder in ``reports`` (``build(rows, ctx) ->
[Section]``, see `elasticity.report.document`); an experiment without one gets `build_generic`, a
table of every row. Rows without metrics are skipped (and logged) before any builder sees them;
``results.csv`` still lists every row.

The plots are rendered into a temporary folder that replaces ``DIR/plots`` as a whole (stale PNGs of
an earlier report do not linger), then ``report.md`` is written; every file goes through
`elasticity.atomic`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from absl import logging

from elasticity import atomic
from elasticity.report.document import Builder, Context, Section, render
from elasticity.report.results import ResultsError, Row, load_rows, read_experiment, with_metrics
from elasticity.report.tables import markdown_table, write_csv

RESULTS = "results.jsonl"


def build_generic(rows: Sequence[Row], ctx: Context) -> list[Section]:
  """Every row as one flat table (identity, coordinates, scalar metrics)."""
  del ctx
  return [Section("All rows", markdown_table([r.flat() for r in rows]))]


def results_files(workdir: str | os.PathLike) -> list[Path]:
  """``results.jsonl`` then any ``results.*.jsonl`` shards, sorted; the first must exist."""
  workdir = Path(workdir)
  main = workdir / RESULTS
  if not main.is_file() and not any(workdir.glob("results.*.jsonl")):
    raise ResultsError(f"{main}: no such results file (is --workdir an experiment folder?)")
  return [p for p in [main] if p.is_file()] + sorted(workdir.glob("results.*.jsonl"))


# The lines under the title: (rows read, rows with metrics, files read, experiment.json) -> lines.
Preamble = Callable[[Sequence[Row], Sequence[Row], Sequence[Path], Mapping[str, Any]], list[str]]


def default_preamble(rows: Sequence[Row], measured: Sequence[Row], files: Sequence[Path],
                     experiment: Mapping[str, Any]) -> list[str]:
  """The experiment, its variant, how many rows, cells and seeds, the files and the git commit."""
  groups = list(dict.fromkeys(r.experiment for r in measured))
  name = experiment.get("name") or ", ".join(groups) or "experiment"
  variant = experiment.get("variant")
  preamble = [f"- experiment: `{name}`" + (f", variant `{variant}`" if variant else ""),
              f"- rows: {len(rows)} ({len(rows) - len(measured)} without metrics skipped), cells: "
              f"{len({r.cell for r in rows})}, seeds: "
              f"{', '.join(str(s) for s in sorted({r.seed for r in rows if r.seed is not None}))}",
              f"- from: {', '.join(f'`{p.name}`' for p in files)}; all rows in `results.csv`"]
  if experiment.get("git_commit"):
    preamble.append(f"- git commit: `{experiment['git_commit']}`")
  return preamble


def build_report(workdir: str | os.PathLike, reports: Mapping[str, Builder], *,
                 title: str | None = None, preamble: Preamble = default_preamble) -> Path:
  """Regenerate ``report.md``, ``plots/`` and ``results.csv`` in ``workdir``, each experiment's rows
  by its builder in ``reports``; returns report.md."""
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
  # plots/ is the report's own when it holds only PNGs (no marker: readers list the folder).
  with atomic.directory(workdir / "plots", mark=False,
                        ours=lambda d: all(p.suffix == ".png" for p in d.iterdir())) as tmp:
    ctx = Context(workdir=workdir, plots_dir=tmp, experiment=experiment, experiment_file=exp_file)
    for name, group in groups.items():
      builder = reports.get(name, build_generic)
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
  text = render(title or f"{name}" + (f" — {variant}" if variant else ""),
                preamble(rows, measured, files, experiment), sections)
  path = atomic.write_text(workdir / "report.md", text)
  logging.info("wrote %s (%d sections, %d plots)", path, len(sections), len(ctx.plots))
  return path
