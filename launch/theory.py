"""The theory lab: Theorem 4.2's exact table for a synthetic world, or the Pareto fits of real trees.

    python -m launch.theory --config=configs/theory.py:exact [--workdir=OUT]
    python -m launch.theory --config=configs/theory.py:pareto [--workdir=OUT]
    python -m launch.theory --config=configs/theory.py:pareto_model [--workdir=OUT]
    python -m launch.theory --config=configs/theory.py:lab [--workdir=OUT]     # = python -m launch.main

Prints the tables as markdown; with ``--workdir`` also writes ``theory_<variant>.json`` and
``theory_<variant>.md`` there (atomically). Unknown ``--config.<key>`` overrides stop the run.
"""

from __future__ import annotations

import time
from pathlib import Path

from absl import flags, logging

from elasticity import atomic, paths
from elasticity.theory import exact, pareto_model, pareto_real
from elasticity.theory.lab import run_lab
from launch import app

_CONFIG = app.config_file(
    "config", str(paths.PROJECT_ROOT / "configs" / "theory.py") + ":exact",
    "Theory lab configuration (configs/theory.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for theory_exact.json/.md (optional).")


def main(argv: list[str]) -> None:
  del argv
  cfg = _CONFIG.value
  if cfg.variant in ("lab", "lab_small"):     # the network lab: a report folder, not one table
    out = run_lab(cfg, _WORKDIR.value or str(paths.PROJECT_ROOT / "runs" / cfg.name))
    print(f"report: {out['report']}\nwall time {out['seconds']:.1f} s, CPU time {out['cpu_seconds']:.1f} s")
    return
  if cfg.variant == "pareto":
    run, to_markdown = pareto_real.run_pareto, pareto_real.to_markdown
  elif cfg.variant == "pareto_model":
    run, to_markdown = pareto_model.run_pareto_model, pareto_model.to_markdown
  else:
    run, to_markdown = exact.run_exact, exact.to_markdown
  t0 = time.perf_counter()
  res = run(cfg)
  text = to_markdown(res)
  print(text)
  if _WORKDIR.value:
    out = Path(_WORKDIR.value).expanduser()
    stem = f"theory_{cfg.variant}"
    atomic.write_json(out / f"{stem}.json", res)
    atomic.write_text(out / f"{stem}.md", text)
    logging.info("wrote %s and %s", out / f"{stem}.json", out / f"{stem}.md")
  print(f"wall time {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
  app.run(main, cache=False, orbax=False)
