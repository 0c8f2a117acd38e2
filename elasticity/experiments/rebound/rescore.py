"""Re-score a finished experiment's saved generations with another scorer, without generating again.

    python -m launch.report --workdir=DIR --rescore=SCORER_DIR
    from elasticity.experiments.rebound.rescore import rescore; rescore(DIR, SCORER_DIR)

Every evaluation point keeps its continuations in ``cells/<id>/points/<point>/generations.jsonl``; this
replaces the score metrics (``score``, ``p_positive`` or ``score_sd``) of each row of ``results.jsonl``
and of each cell's ``done.json`` with the new scorer's, leaving the other metrics (Δγ, KL) as they were.
The scorer used is recorded in ``experiment.json`` under ``rescored``. Rows whose generations are
missing are named in the error, and nothing is written then.

**The archive**: `export_generations` writes every row's continuations into one
``generations.jsonl.gz`` beside ``results.jsonl`` (one line per row: cell, point, seed, coords and its
``[{"prompt", "completion"}]``; gzip without a timestamp, so the same rows give the same bytes). The
rebound report writes it whenever the cells' generations are there, so the pair (results.jsonl,
generations.jsonl.gz) can be copied, committed and re-scored anywhere: `rescore` reads the archive
for the rows whose cell folders are gone.
"""

from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

from absl import logging

from elasticity import atomic
from elasticity.eval import generations as gen_lib
from elasticity.eval.scorers import load_scorer
from elasticity.experiments.rebound.evaluate import rescore_rows

SCORE_KEYS = ("score", "p_positive", "score_sd", "score_values")
STALE_KEYS = ("stage1_gain", "stage1_gain_se", "stage1_aligned")   # dropped: the report recomputes them


ARCHIVE = "generations.jsonl.gz"


def _gen_path(workdir: Path, r: dict) -> Path:
  return workdir / "cells" / r["cell"] / "points" / r["point"] / "generations.jsonl"


def export_generations(workdir: str | os.PathLike) -> Path | None:
  """Write ``<workdir>/generations.jsonl.gz`` (module docstring); ``None`` (nothing written) when a
  row's generations are missing."""
  workdir = Path(workdir)
  rows = atomic.read_jsonl(workdir / "results.jsonl")
  if not rows or not all(_gen_path(workdir, r).exists() for r in rows):
    return None
  buf = io.BytesIO()
  with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as f:
    for r in rows:
      gens, _ = gen_lib.load(_gen_path(workdir, r))
      line = {"cell": r["cell"], "point": r["point"], "seed": r.get("seed"), "coords": r["coords"],
              "generations": [{"prompt": g["prompt"], "completion": g["completion"]} for g in gens]}
      f.write((json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8"))
  return atomic.write_bytes(workdir / ARCHIVE, buf.getvalue())


def read_archive(path: str | os.PathLike) -> dict[tuple[str, str], list[dict]]:
  """``{(cell, point): [{"prompt", "completion"}, ...]}`` of a ``generations.jsonl.gz``."""
  out = {}
  with gzip.open(path, "rt", encoding="utf-8") as f:
    for i, line in enumerate(f, 1):
      try:
        rec = json.loads(line)
        out[(rec["cell"], rec["point"])] = rec["generations"]
      except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{path}: line {i}: not an archive record ({e})") from None
  return out


def rescore(workdir: str | os.PathLike, scorer_dir: str | os.PathLike, *, score_text: str | None = None,
            **scorer_options) -> list[dict]:
  """Re-score every row; returns the new rows (also written to ``results.jsonl``)."""
  workdir = Path(workdir)
  meta = atomic.read_json(workdir / "experiment.json")
  score_text = score_text or meta.get("config", {}).get("eval", {}).get("score_text", "completion")
  score_as = meta.get("config", {}).get("eval", {}).get("score_as", "share")
  rows = atomic.read_jsonl(workdir / "results.jsonl")
  archive = read_archive(workdir / ARCHIVE) if (workdir / ARCHIVE).exists() else {}
  missing = [f"{r['cell']}/{r['point']}" for r in rows
             if not _gen_path(workdir, r).exists() and (r["cell"], r["point"]) not in archive]
  if missing:
    raise FileNotFoundError(f"{workdir}: no generations.jsonl for {len(missing)} row(s): "
                            f"{', '.join(missing[:5])}{' …' if len(missing) > 5 else ''}")
  scorer = load_scorer(os.fspath(scorer_dir), **scorer_options)   # kind, sign, … as load_scorer takes
  new_rows = []
  for r in rows:
    path = _gen_path(workdir, r)
    gens = gen_lib.load(path)[0] if path.exists() else archive[(r["cell"], r["point"])]
    metrics = {k: v for k, v in r["metrics"].items() if k not in SCORE_KEYS + STALE_KEYS}
    metrics.update(rescore_rows(gens, scorer, score_text, score_as))
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
