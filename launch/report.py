"""Regenerate an experiment folder's report from its results alone.

    python -m launch.report --workdir=DIR                      # report.md, plots/*.png, results.csv
    python -m launch.report --workdir=DIR --rescore=SCORER_DIR # re-score saved generations first

Shards of a grid (``launch/experiment.py --shard=i/n``, rows in ``DIR/shards/``) are merged first
into ``DIR/results.jsonl`` in the grid's cell order (`elasticity.experiments.core.shards.merge_shards`).
``--rescore`` runs `elasticity.experiments.rebound.rescore.rescore(workdir, scorer_dir)` (the saved
``generations.jsonl`` of every cell scored again by another scorer, results.jsonl updated), then
writes the report. A bad results row stops with a message naming the file, the line and the field.
"""

from __future__ import annotations

from absl import flags, logging

from elasticity.experiments import build_report
from elasticity.experiments.core.shards import merge_shards
from elasticity.experiments.rebound.rescore import rescore
from elasticity.report import ResultsError
from launch import app

_WORKDIR = flags.DEFINE_string("workdir", None, "Experiment folder (holds results.jsonl).",
                               required=True)
_RESCORE = flags.DEFINE_string("rescore", None,
                               "Scorer folder: re-score the saved generations before reporting.")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    merged = merge_shards(_WORKDIR.value)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"FATAL: {e}") from None
  if merged is not None:
    logging.info("merged the shards' rows into %s", merged)
  if _RESCORE.value:
    logging.info("re-scoring %s with %s", _WORKDIR.value, _RESCORE.value)
    rescore(_WORKDIR.value, _RESCORE.value)
  try:
    path = build_report(_WORKDIR.value)
  except ResultsError as e:
    raise SystemExit(f"FATAL: {e}") from None
  print(path)


if __name__ == "__main__":
  app.run(main, cache=False, orbax=False)
