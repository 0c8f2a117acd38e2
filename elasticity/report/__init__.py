"""Reports from results: validated rows (`results`), tables (`tables`), plots (`plots`), one builder
per experiment (`REPORTS`, e.g. `rebound`) and `build_report(workdir)`, which regenerates an
experiment folder's report.md, plots/*.png and results.csv from its results.jsonl alone."""

from elasticity.report.builder import REPORTS, build_generic, build_report, results_files
from elasticity.report.document import Context, Section
from elasticity.report.results import ResultsError, Row, Stat, aggregate, load_rows, mean_sd
from elasticity.report.tables import markdown_table, write_csv, write_json, write_markdown

__all__ = ["REPORTS", "build_generic", "build_report", "results_files", "Context", "Section",
           "ResultsError", "Row", "Stat", "aggregate", "load_rows", "mean_sd", "markdown_table",
           "write_csv", "write_json", "write_markdown"]
