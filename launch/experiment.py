"""Run an experiment grid (rebound, …) from a config file: resumable, one process, all devices.

    python -m launch.experiment --config=configs/experiments/rebound.py:tiny --workdir=/tmp/rebound
    python -m launch.experiment --config=configs/experiments/rebound.py:smollm2 --workdir=runs/rebound
    python -m launch.experiment --config=configs/experiments/rebound.py:llama2-7b,imdb --workdir=DIR --dry_run
    python -m launch.experiment --config=...:smollm2 --workdir=DIR --config.n_pos='(100,)' --config.eval.kl=False

Rerunning the same command continues: finished cells are skipped, an interrupted one resumes from its
latest checkpoint. SIGTERM/SIGINT save a checkpoint and exit with status 3 (run it again to go on).
``--shard=i/n`` runs the i-th of n disjoint parts of the grid (one per machine, sharing --workdir;
`elasticity.experiments.core.runner`); ``python -m launch.report --workdir=DIR`` merges them.
``--dry_run`` prints the cells (id, parent, data sizes, steps, tokens) without loading a model. On
several hosts every process runs this same command; process 0 writes the results and the report.
See elasticity/experiments/core/ (runner.py, workdir.py) for the work directory's layout.
"""

from __future__ import annotations

import os
import sys

from absl import flags, logging

from elasticity.experiments.core import runner
from elasticity.train.signals import StopOnSignal
from launch import app

_CONFIG = app.config_file("config", None, "Experiment config "
                          "(configs/experiments/<name>.py:<variant>).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The experiment's directory (results, cells, report).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Print the cell table and exit; nothing is loaded.")
_SHARD = flags.DEFINE_string("shard", "", "i/n (0 <= i < n): run only the i-th of n disjoint parts of "
                             "the grid; n processes sharing --workdir run it together (merge with "
                             "python -m launch.report --workdir=DIR).")
flags.mark_flags_as_required(["config", "workdir"])

PREEMPTED_EXIT = app.EXIT_PREEMPTED


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  try:
    runner.validate(cfg.experiment, cfg, dry_run=_DRY_RUN.value)
    shard = runner.parse_shard(_SHARD.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  if _DRY_RUN.value:
    runner.run(cfg.experiment, cfg, _WORKDIR.value, dry_run=True, shard=shard, validated=True)
    return
  with StopOnSignal() as stop:
    summary = runner.run(cfg.experiment, cfg, _WORKDIR.value, stop=lambda: stop.requested,
                         shard=shard, validated=True)
  logging.info("%s: %d cells (%d run now); results in %s", summary.status, summary.cells, summary.ran,
               os.path.join(summary.workdir, "results.jsonl"))
  if summary.status == "preempted":
    sys.exit(PREEMPTED_EXIT)
  if shard is None:
    print(f"report: {os.path.join(summary.workdir, 'report.md')}", flush=True)
  else:
    print(f"shard {shard[0]}/{shard[1]} done: python -m launch.report --workdir={summary.workdir}",
          flush=True)


if __name__ == "__main__":
  app.run(main, threefry=True)
