"""Reports from results: validated rows (`results`), tables (`tables`), plots (`plots`), the pieces a
builder returns (`document`) and the generic `builder`, which regenerates an experiment folder's
report.md, plots/*.png and results.csv from its results.jsonl alone.

Each experiment's own builder lives with the experiment (e.g. `elasticity.experiments.rebound.report`);
`elasticity.experiments.build_report(workdir)` knows them all. matplotlib (which reads its config and
font cache when imported) loads only when a plot is drawn, so ``from elasticity import report`` for
the tables stays light.
"""

from elasticity.report.builder import build_generic, results_files
from elasticity.report.document import Context, Section
from elasticity.report.results import ResultsError, Row, Stat, aggregate, load_rows, mean_sd
from elasticity.report.tables import markdown_table, write_csv, write_json, write_markdown

__all__ = ["build_generic", "results_files", "Context", "Section", "ResultsError", "Row", "Stat",
           "aggregate", "load_rows", "mean_sd", "markdown_table", "write_csv", "write_json",
           "write_markdown"]
