"""Re-score a finished experiment's saved generations with another scorer, without generating again.

    python -m launch.report --workdir=DIR --rescore=SCORER_DIR
    from elasticity.experiments.rebound.rescore import rescore; rescore(DIR, SCORER_DIR)

Every evaluation point keeps its continuations in ``cells/<id>/points/<point>/generations.jsonl``; this
replaces the score metrics (``score``, ``p_positive`` or ``score_sd``) of each row of ``results.jsonl``
and of each cell's ``done.json`` with the new scorer's, leaving the other metrics (Δγ, KL) as they were.
The scorer used is recorded in ``experiment.json`` under ``rescored``. Rows whose generations are
missing are named in the error, and nothing is written then.
"""

from __future__ import annotations

import os
from pathlib import Path

from absl import logging

from elasticity import atomic
from elasticity.eval import generations as gen_lib
from elasticity.eval.scorers import load_scorer
from elasticity.experiments.rebound.evaluate import rescore_rows

SCORE_KEYS = ("score", "p_positive", "score_sd", "score_values")
STALE_KEYS = ("stage1_gain", "stage1_gain_se", "stage1_aligned")   # dropped: the report recomputes them


def rescore(workdir: str | os.PathLike, scorer_dir: str | os.PathLike, *, score_text: str | None = None,
            **scorer_options) -> list[dict]:
  """Re-score every row; returns the new rows (also written to ``results.jsonl``)."""
  workdir = Path(workdir)
  meta = atomic.read_json(workdir / "experiment.json")
  score_text = score_text or meta.get("config", {}).get("eval", {}).get("score_text", "completion")
  rows = atomic.read_jsonl(workdir / "results.jsonl")
  missing = [f"{r['cell']}/{r['point']}" for r in rows
             if not (workdir / "cells" / r["cell"] / "points" / r["point"] / "generations.jsonl").exists()]
  if missing:
    raise FileNotFoundError(f"{workdir}: no generations.jsonl for {len(missing)} row(s): "
                            f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
  scorer = load_scorer(os.fspath(scorer_dir), **scorer_options)   # kind, sign, … as load_scorer takes
  new_rows = []
  for r in rows:
    gens, _ = gen_lib.load(workdir / "cells" / r["cell"] / "points" / r["point"] / "generations.jsonl")
    metrics = {k: v for k, v in r["metrics"].items() if k not in SCORE_KEYS + STALE_KEYS}
    metrics.update(rescore_rows(gens, scorer, score_text))
    new_rows.append({**r, "metrics": metrics})
  by_cell: dict[str, list[dict]] = {}
  for r in new_rows:
    by_cell.setdefault(r["cell"], []).append(r)
  for cell, cell_rows in by_cell.items():
    marker = workdir / "cells" / cell / "done.json"
    if marker.exists():
      done = atomic.read_json(marker)
      atomic.write_json(marker, {**done, "rows": cell_rows})
  atomic.write_jsonl(workdir / "results.jsonl", new_rows)
  atomic.write_json(workdir / "experiment.json",
                    {**meta, "rescored": {"scorer": os.path.abspath(os.fspath(scorer_dir)),
                                          "score_text": score_text}})
  logging.info("re-scored %d rows with %s", len(new_rows), scorer_dir)
  return new_rows
