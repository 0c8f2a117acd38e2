"""The theory lab's exact part: print (and write) Theorem 4.2's table for a synthetic world.

    python -m launch.theory --config=configs/theory.py:exact [--workdir=OUT]

Prints the tables as markdown; with ``--workdir`` also writes ``theory_exact.json`` and
``theory_exact.md`` there (atomically). Unknown ``--config.<key>`` overrides stop the run.
"""

from __future__ import annotations

import time
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from elasticity import atomic, paths

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(paths.PROJECT_ROOT / "configs" / "theory.py") + ":exact",
    "Theory lab configuration (configs/theory.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for theory_exact.json/.md (optional).")


def main(argv: list[str]) -> None:
  del argv
  from elasticity.theory.exact import run_exact, to_markdown
  t0 = time.perf_counter()
  res = run_exact(_CONFIG.value)
  text = to_markdown(res)
  print(text)
  if _WORKDIR.value:
    out = Path(_WORKDIR.value).expanduser()
    atomic.write_json(out / "theory_exact.json", res)
    atomic.write_text(out / "theory_exact.md", text)
    logging.info("wrote %s and %s", out / "theory_exact.json", out / "theory_exact.md")
  print(f"wall time {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
  app.run(main)
