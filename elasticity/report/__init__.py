"""Reports from results: validated rows (`results`), tables (`tables`), plots (`plots`), one builder
per experiment (`REPORTS`, e.g. `rebound`) and `build_report(workdir)`, which regenerates an
experiment folder's report.md, plots/*.png and results.csv from its results.jsonl alone.

The builders (and matplotlib, which reads its config and font cache when imported) load on first
use of a name that needs them, so ``from elasticity import report`` for the tables stays light.
"""

import importlib

from elasticity.report.results import ResultsError, Row, Stat, aggregate, load_rows, mean_sd
from elasticity.report.tables import markdown_table, write_csv, write_json, write_markdown

_LAZY = {"REPORTS": "builder", "build_generic": "builder", "build_report": "builder",
         "results_files": "builder", "Context": "document", "Section": "document"}


def __getattr__(name):
  if name in _LAZY:
    return getattr(importlib.import_module(f"elasticity.report.{_LAZY[name]}"), name)
  raise AttributeError(f"module 'elasticity.report' has no attribute {name!r}")


__all__ = ["REPORTS", "build_generic", "build_report", "results_files", "Context", "Section",
           "ResultsError", "Row", "Stat", "aggregate", "load_rows", "mean_sd", "markdown_table",
           "write_csv", "write_json", "write_markdown"]
