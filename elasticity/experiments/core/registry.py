"""Experiments and report builders by name: the runner finds ``config.experiment`` here, and
`build_report` finds the builder of each experiment's rows.

Both tables are filled by explicit `register` calls in ``elasticity/experiments/__init__.py``, which
Python runs before any module of the package, so every experiment of the tree (and the theory lab's
report) is registered whenever the runner or `build_report` can be called.

    from elasticity.experiments import build_report
    build_report("runs/rebound")     # -> runs/rebound/report.md, plots/*.png, results.csv
"""

from __future__ import annotations

import os
from pathlib import Path

from elasticity.experiments.core.protocol import Experiment
from elasticity.report import builder
from elasticity.report.document import Builder

EXPERIMENTS: dict[str, Experiment] = {}
REPORTS: dict[str, Builder] = {}


def register(name: str, experiment: Experiment | None = None, report: Builder | None = None) -> None:
  """Register an experiment the runner can run and/or the report builder of its rows."""
  if experiment is not None:
    EXPERIMENTS[name] = experiment
  if report is not None:
    REPORTS[name] = report


def experiment(name: str) -> Experiment:
  if name not in EXPERIMENTS:
    raise ValueError(f"config.experiment: {name!r} is not one of {sorted(EXPERIMENTS)}")
  return EXPERIMENTS[name]


def build_report(workdir: str | os.PathLike, *, title: str | None = None) -> Path:
  """Regenerate ``report.md``, ``plots/`` and ``results.csv`` in ``workdir`` from its results, each
  experiment's rows by its registered builder (`elasticity.report.builder.build_report`)."""
  return builder.build_report(workdir, REPORTS, title=title)
