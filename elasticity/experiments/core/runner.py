"""The experiment runner: a grid of cells, run one after another in one process, resumable at any point.

    from elasticity.experiments.core import runner
    summary = runner.run("rebound", config, "runs/rebound")        # or launch/experiment.py

An **experiment** is an `elasticity.experiments.core.protocol.Experiment` registered by name
(`elasticity.experiments.core.registry`): ``validate``, ``plan``, ``prepare`` (the point evaluator,
called as ``evaluator(checkpoint, tokenizer, point_dir, context=PointContext)``), ``before_train``
(called before every run of an unfinished cell, with a `TrainContext`) and ``refine``.

Layout of the work directory (every file written atomically, on process 0 only)::

    experiment.json         resolved config, package versions, git commit
    data/                   files the cells train on (e.g. `elasticity.experiments.rebound.data`)
    cells/<id>/cell.json    the cell as resolved (name, coordinates, parent id, training config)
    cells/<id>/train/       the training workdir (checkpoints, metrics.jsonl, hf/, snapshots)
    cells/<id>/points/<p>/  generations.jsonl, metrics.json of each evaluation point (the rebound
                            evaluator adds policy_hidden.npz, the policy's activations for the KL)
    cells/<id>/done.json    the cell's result rows and evaluation fingerprint, written last
    results.jsonl           every finished cell's rows, in plan order
    report.md, plots/       from results.jsonl (`registry.build_report`)

Rerunning the same command skips finished cells (``done.json`` with the current evaluation
fingerprint) and resumes an interrupted training run from its latest checkpoint. SIGTERM/SIGINT stop
the current run at a step boundary with a checkpoint saved, and the runner stops there (status
``"preempted"``), never moving on to the next cell. Because training resumes exactly and evaluation is
seeded, an interrupted and resumed experiment writes the same ``results.jsonl`` as an uninterrupted
one. Cells share one process, so compiled functions of equal shapes are reused from cell to cell.

**Shards** (``shard=(i, n)``, ``launch/experiment.py --shard=i/n``, i from 0; `shards`): the process runs
only the cells whose position in the ordered grid is ≡ i (mod n), so n processes on n machines sharing
``workdir`` run disjoint parts of one grid. A cell whose parent or needs belong to another shard waits,
polling every ``poll_s`` seconds, for that cell's ``done.json`` (``runner.wait_timeout_s``, default a
day, then a `ShardWaitTimeout` naming both cells). Cells are in dependency order, so the globally first
unfinished cell never waits and the shards cannot deadlock. Each shard writes its rows to
``shards/results.<i>-of-<n>.jsonl`` and the grid's cell order to ``grid.json``; ``python -m
launch.report --workdir=DIR`` merges them (`shards.merge_shards`) into ``results.jsonl``, equal to a
single-process run's, then writes the report. A shard never deletes an export that a cell without
``done.json`` (in any shard) starts from. ``refine()`` cells are not run under ``--shard`` (a warning
says so): run the same command without ``--shard`` afterwards to add them.

Disk (`workdir.cleanup`): a finished cell's checkpoints are deleted unless ``runner.keep_checkpoints``
(and then its run does not checkpoint its last step at all, ``checkpoint.at_end``: its ``DONE.json``
and exports are what the grid keeps);
its exports are deleted once no pending cell starts from them unless ``runner.keep_exports``. A cell
added later (a new arm or stage-2 size in the same workdir) whose parent's export was deleted gets it
back (`_restore_start`): the parent is trained again from its recorded config, and must end exactly
where it ended the first time (steps and last metrics in ``DONE.json``), or the run stops naming both.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from absl import logging

from elasticity import atomic
from elasticity.eval.scorers import ScorerConfigError
from elasticity.experiments.core import registry
from elasticity.experiments.core import workdir as workdir_lib
from elasticity.experiments.core.cells import Cell
from elasticity.experiments.core.dry_run import show
from elasticity.experiments.core.grid import Grid, Preempted, resolve_placeholders, row
from elasticity.experiments.core.protocol import Evaluator, Experiment, PointContext, TrainContext
from elasticity.experiments.core.shards import ShardWaitTimeout, parse_shard, shard_of, wait_for
from elasticity.train import loop, record

EXPERIMENTS = registry.EXPERIMENTS

__all__ = ["EXPERIMENTS", "Preempted", "PointContext", "RestoreMismatch", "ShardWaitTimeout", "Summary",
           "TrainContext", "parse_shard", "run", "validate"]


@dataclasses.dataclass
class Summary:
  status: str                     # "completed" | "preempted" | "dry_run"
  cells: int
  ran: int                        # cells trained or evaluated in this process
  rows: list[dict]
  workdir: str


def validate(experiment: str, config, *, dry_run: bool = False) -> None:
  """The experiment's own checks (a clear ``ValueError`` naming the key, before anything is loaded).

  A dry run only warns about a missing or unusable scorer: it lists the grid, which needs none, so
  the paper's grids can be inspected on a machine where no classifier or cost model is installed.
  """
  try:
    registry.experiment(experiment).validate(config)
  except ScorerConfigError as e:
    if not dry_run:
      raise
    logging.warning("dry run: %s (a real run stops here)%s", e, f". {e.note}" if e.note else "")


def _train_cell(cell: Cell, grid: Grid, stop: Callable[[], bool] | None, progress: str,
                train_dir: Path | None = None, *, keep_checkpoints: bool = True) -> None:
  """Train the cell. Without ``keep_checkpoints`` (cleanup deletes a finished cell's checkpoints) the
  last step is not checkpointed: the run's ``DONE.json`` and exports are what the grid keeps."""
  cfg = copy.deepcopy(cell.train)
  cfg.unlock()
  path, tok = grid.model(cell, "start")
  cfg.model.path, cfg.model.tokenizer = path, tok
  cfg.export.snapshot_dir = ""          # snapshots inside the cell's train workdir
  if not keep_checkpoints:
    cfg.checkpoint.at_end = False
  cfg.lock()
  cfg = resolve_placeholders(cfg, cell, grid)
  t0, last = time.perf_counter(), [0.0]

  def on_step(step: int, total: int, metrics: dict) -> None:
    now = time.perf_counter()
    if now - last[0] < 10 and step != total:
      return
    last[0] = now
    eta = (now - t0) / max(step, 1) * (total - step)
    logging.info("%s step %d/%d  loss %.4f  ETA %s", progress, step, total,
                 float(metrics.get("loss", float("nan"))), time.strftime("%H:%M:%S", time.gmtime(eta)))

  result = loop.train(cfg, train_dir or grid.cell_dir(cell) / "train", stop=stop, on_step=on_step)
  if result.status != "completed":
    raise Preempted(f"cell {cell.name!r} ({grid.ids[cell.name]}) stopped at step {result.step}/"
                    f"{result.total_steps}; rerun the same command to resume it")


def _restore_dir(pdir: Path, shard: tuple[int, int] | None) -> Path:
  """Where the parent is trained again: one folder per shard, so that two shards restoring the same
  parent at once never train into one workdir (each checks its own run; the first to finish moves)."""
  return pdir / ("restore" if shard is None else f"restore.{shard[0]}-of-{shard[1]}")


def _restore_start(exp: Experiment, config, cell: Cell, grid: Grid, evaluator: Evaluator,
                   stop: Callable[[], bool] | None, progress: str,
                   shard: tuple[int, int] | None = None) -> None:
  """Make again the finished parent's export this cell starts from, when cleanup deleted it before the
  cell joined the grid (a new arm or n⁻ added to a finished grid; module docstring).

  The parent is trained again into ``cells/<parent>/restore/`` (``restore.<i>-of-<n>/`` under
  ``--shard``; recursively, when its own start is gone too); its recorded end (``DONE.json``: steps
  and last metrics) must equal the first run's exactly, or a `RestoreMismatch` names both and nothing
  is moved; then its exports replace the deleted ones in ``cells/<parent>/train/`` and the restore
  folder, which the runner wrote, goes.
  """
  if cell.parent is None:
    return
  parent = grid.by_name[cell.parent]
  path, _ = grid.model(cell, "start")
  if parent.train is None or os.path.exists(path):
    return
  pdir = grid.cell_dir(parent)
  first = record.read_done(pdir / "train")
  if first is None:
    raise FileNotFoundError(f"cell {cell.name!r}: it starts from {path}, which is missing, and its "
                            f"parent {parent.name!r} ({grid.ids[parent.name]}) has not completed")
  _restore_start(exp, config, parent, grid, evaluator, stop, progress, shard)
  logging.info("%s its start model %s was deleted after %r finished: training %r again to make it",
               progress, path, parent.name, parent.name)
  restore = _restore_dir(pdir, shard)
  exp.before_train(config, TrainContext(parent, grid.ids[parent.name], pdir, grid.workdir,
                                        grid.model(parent, "start"), evaluator))
  _train_cell(parent, grid, stop, f"{progress} [restoring {parent.name}]", restore,
              keep_checkpoints=False)                   # the restore folder goes below
  again = record.read_done(restore)
  mine = {k: again.get(k) for k in ("step", "total_steps", "last")}
  theirs = {k: first.get(k) for k in ("step", "total_steps", "last")}
  if mine != theirs:
    raise RestoreMismatch(f"cell {parent.name!r} ({grid.ids[parent.name]}): trained again to restore "
                          f"its deleted exports, it ended at {mine}, the first run at {theirs} "
                          f"(another code version or backend?); nothing moved, see {restore}; run "
                          "the new cells in a new workdir")
  if not workdir_lib.is_writer():
    return
  for name in ["final", *sorted(parent.snapshot_names())]:
    sub = "hf" if name == "final" else name
    if (restore / sub).exists() and not (pdir / "train" / sub).exists():
      try:
        os.replace(restore / sub, pdir / "train" / sub)
      except OSError:                  # another shard's equal restore got there first
        if not (pdir / "train" / sub).exists():
          raise
  shutil.rmtree(restore, ignore_errors=True)


class RestoreMismatch(RuntimeError):
  """A parent trained again to restore its deleted exports did not end where its first run did."""


def _run_cell(experiment: str, exp: Experiment, config, cell: Cell, grid: Grid, evaluator: Evaluator,
              stop: Callable[[], bool] | None, progress: str,
              shard: tuple[int, int] | None = None) -> list[dict]:
  """Train the cell (when it has a run), evaluate its points, write done.json; its rows."""
  cdir = grid.cell_dir(cell)
  workdir_lib.write_cell(grid, cell)
  if cell.train is not None:
    _restore_start(exp, config, cell, grid, evaluator, stop, progress, shard)
    exp.before_train(config, TrainContext(cell, grid.ids[cell.name], cdir, grid.workdir,
                                          grid.model(cell, "start"), evaluator))
    _train_cell(cell, grid, stop, progress,
                keep_checkpoints=bool(config.runner.get("keep_checkpoints", True)))
  rows = []
  for point in cell.points:
    path, tok = grid.model(cell, point.model)
    ctx = PointContext(cell, grid.ids[cell.name], cdir,
                       cdir / "train" if cell.train is not None else None,
                       grid.model(cell, "start"), point)
    metrics = evaluator(path, tok, cdir / "points" / point.name, context=ctx)
    rows.append(row(experiment, grid, cell, point, metrics))
  workdir_lib.write_done(grid, cell, evaluator.fingerprint, rows)
  return rows


def _finished(experiment: str, grid: Grid, cell: Cell, evaluator: Evaluator) -> list[dict] | None:
  """The cell's rows when its done.json holds the current evaluation fingerprint, labelled as this
  grid names the cell: a cell's identity covers what it computes, not its name or coordinates, so a
  finished cell copied from another grid (the same stage-1 run under another reverse step) keeps its
  metrics and takes this grid's labels."""
  marker = grid.cell_dir(cell) / "done.json"
  if marker.exists():
    done = atomic.read_json(marker)
    if done.get("fingerprint") == evaluator.fingerprint:
      points = {p.name: p for p in cell.points}
      return [row(experiment, grid, cell, points[r["point"]], r["metrics"]) for r in done["rows"]]
  return None


def _refine(exp: Experiment, config, grid: Grid, rows_by_cell: dict[str, list[dict]],
            shard: tuple[int, int] | None) -> list[Cell]:
  """The next round of ``refine()`` cells (none under ``--shard``, with a warning)."""
  if not exp.refines:
    return []
  if shard is not None:
    logging.warning("shard %d/%d: refine() cells (e.g. bisection points) are not run with "
                    "--shard; run the same command without --shard to add them", *shard)
    return []
  more = exp.refine(config, [r for c in grid.cells for r in rows_by_cell.get(c.name, [])])
  return grid.add(more) if more else []


def run(experiment: str, config, workdir: str | os.PathLike, *, dry_run: bool = False,
        stop: Callable[[], bool] | None = None, report: bool = True,
        shard: tuple[int, int] | None = None, poll_s: float = 2.0, validated: bool = False
        ) -> Summary:
  """Run (or continue) the experiment ``config`` describes in ``workdir`` (module docstring);
  ``shard=(i, n)`` runs only the i-th of n disjoint parts of the grid; ``validated``: the caller has
  already run `validate` on this config."""
  if shard is not None and (shard[1] < 1 or not 0 <= shard[0] < shard[1]):
    raise ValueError(f"shard: want (i, n) with 0 <= i < n, got {shard}")
  if shard is not None and shard[1] == 1:
    shard = None
  exp = registry.experiment(experiment)
  if not validated:
    validate(experiment, config, dry_run=dry_run)
  workdir = Path(os.path.abspath(os.fspath(workdir)))
  grid = Grid(workdir)
  grid.add(exp.plan(config))
  if dry_run:
    show([c for j, c in enumerate(grid.cells) if shard_of(j, shard)], grid.ids, exp.refines)
    return Summary("dry_run", len(grid.cells), 0, [], os.fspath(workdir))

  workdir_lib.write_experiment(workdir, experiment, config, grid, shard)
  evaluator = exp.prepare(config, workdir)
  runner_cfg = config.runner
  wait_timeout_s = float(runner_cfg.get("wait_timeout_s", 86400.0))
  mine = {c.name for j, c in enumerate(grid.cells) if shard_of(j, shard)}
  rows_by_cell: dict[str, list[dict]] = {}
  ran = 0
  pending = [c for c in grid.cells if c.name in mine]
  t_start = time.perf_counter()
  try:
    while pending:
      for cell in pending:
        if stop is not None and stop():
          raise Preempted("stopped on a signal between cells; rerun the same command to continue")
        progress = f"[cell {len(rows_by_cell) + 1}/{len(mine)} {cell.name}]"
        done = _finished(experiment, grid, cell, evaluator)
        if done is not None:
          rows_by_cell[cell.name] = done
          logging.info("%s done already (%s)", progress, grid.ids[cell.name])
          continue
        logging.info("%s %s: %s", progress, grid.ids[cell.name],
                     "training" if cell.train is not None else "evaluating")
        if shard is not None:
          wait_for(grid, cell, stop, wait_timeout_s, poll_s, shard, progress)
        rows_by_cell[cell.name] = _run_cell(experiment, exp, config, cell, grid, evaluator, stop,
                                            progress, shard)
        ran += 1
        workdir_lib.write_results(grid, rows_by_cell, shard)
        workdir_lib.cleanup(grid, set(rows_by_cell), runner_cfg.keep_checkpoints,
                            runner_cfg.keep_exports, shard is not None)
        logging.info("%s finished; %d/%d cells done, %.0fs elapsed", progress, len(rows_by_cell),
                     len(grid.cells), time.perf_counter() - t_start)
      pending = _refine(exp, config, grid, rows_by_cell, shard)
      mine |= {c.name for c in pending}
  except Preempted as e:
    logging.warning("%s", e)
    rows = workdir_lib.write_results(grid, rows_by_cell, shard)
    return Summary("preempted", len(mine), ran, rows, os.fspath(workdir))
  rows = workdir_lib.write_results(grid, rows_by_cell, shard)
  workdir_lib.cleanup(grid, set(rows_by_cell), runner_cfg.keep_checkpoints, runner_cfg.keep_exports,
                      shard is not None)
  if shard is not None:
    logging.info("shard %d/%d done; merge every shard's rows and report with: python -m "
                 "launch.report --workdir=%s", shard[0], shard[1], workdir)
    return Summary("completed", len(mine), ran, rows, os.fspath(workdir))
  if report and workdir_lib.is_writer():
    logging.info("report: %s", registry.build_report(workdir))
  return Summary("completed", len(grid.cells), ran, rows, os.fspath(workdir))
