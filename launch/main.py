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

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from elasticity import compile_cache, logs, paths  # noqa: E402

_DEMO = flags.DEFINE_enum("demo", "lab", ["lab", "chat"], "lab: the theory lab (default); chat: the "
                          "SmolLM2 chat demo (launch/demo_chat.py).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", str(paths.PROJECT_ROOT / "configs" / "theory.py") + ":lab",
    "Theory lab configuration (configs/theory.py:lab).", lock_config=True)
_CHAT = config_flags.DEFINE_config_file(
    "chat_config", str(paths.PROJECT_ROOT / "configs" / "demo.py"), "Chat demo configuration.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: runs/<config.name>).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
compile_cache.define_flags()
logs.define_flags()


def main(argv: list[str]) -> None:
  del argv
  compile_cache.enable_from_flags()
  logs.apply_flags()
  if _DEMO.value == "chat":
    from launch.demo_chat import run_chat
    run_chat(_CHAT.value)
    return
  from elasticity.theory.lab import run_lab
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
  from launch import overrides
  app.run(main, flags_parser=overrides.parse)
