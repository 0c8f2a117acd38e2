"""The main job on its embedded default: the theory lab end to end (no download, no data beyond what
it generates; a few minutes on 2 CPU cores): the exact Theorem 4.2 curves of a synthetic world, the
law measured on small Llamas trained from scratch there (three k, two protocols, seeds), resistance,
rebound, scaling and several rounds; writes ``runs/<name>/report.md`` with its plots and prints where.

    python -m launch.main                                   # configs/theory.py:lab
    python -m launch.main --config=configs/theory.py:lab_small --workdir=/tmp/lab
    python -m launch.main --config.seeds=0,1 --config.parts=law,rebound
    python -m launch.main --demo=chat [--chat_config.prompt=...]   # the SmolLM2 chat demo
"""

from __future__ import annotations

import time

from absl import flags, logging

from elasticity import paths
from elasticity.theory.lab import run_lab
from launch import app
from launch.demo_chat import run_chat

_DEMO = flags.DEFINE_enum("demo", "lab", ["lab", "chat"], "lab: the theory lab (default); chat: the "
                          "SmolLM2 chat demo (launch/demo_chat.py).")
_CONFIG = app.config_file(
    "config", str(paths.PROJECT_ROOT / "configs" / "theory.py") + ":lab",
    "Theory lab configuration (configs/theory.py:lab).")
_CHAT = app.config_file(
    "chat_config", str(paths.PROJECT_ROOT / "configs" / "demo.py"), "Chat demo configuration.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<config.name>).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv: list[str]) -> None:
  del argv
  if _DEMO.value == "chat":
    run_chat(_CHAT.value)
    return
  cfg = _CONFIG.value
  if "law" not in cfg:
    raise app.UsageError(f"--config: {cfg.get('variant')!r} is not a lab config; use "
                         "configs/theory.py:lab or :lab_small")
  workdir = _WORKDIR.value or str(paths.PROJECT_ROOT / "runs" / cfg.name)
  t0 = time.perf_counter()
  out = run_lab(cfg, workdir, progress=_PROGRESS.value)
  logging.info("lab done: %d rows", out["rows"])
  print(f"\nreport: {out['report']}")
  print(f"wall time {time.perf_counter() - t0:.1f} s, CPU time {out['cpu_seconds']:.1f} s")


if __name__ == "__main__":
  app.run(main)
