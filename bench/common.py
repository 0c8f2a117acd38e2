"""Helpers shared by the bench scripts: a side-by-side table on stdout, the ``ratio <what> <number>``
lines every script ends with, and one section per script in ``bench/RESULTS.md``.

    rows = [{"impl": "ours", "tokens/s": 812.0}, {"impl": "torch", "tokens/s": 301.5}]
    table = print_table(rows)              # prints aligned text, returns the markdown table
    record("compression (bench/compression.py)", table)
    ratio("tokens_per_s_vs_torch", 812.0 / 301.5)
"""

from __future__ import annotations

import math
import os
import platform
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from elasticity import atomic
from elasticity.report.tables import columns

RESULTS = Path(__file__).resolve().with_name("RESULTS.md")
HEADER = ("# Benchmark results\n\nWritten by the scripts in `bench/` (one section each; a run rewrites "
          "only its section's generated block, text around it is kept). Numbers are from the machine "
          "named in each section.\n")


def fmt(value: Any) -> str:
  """A cell: integers with thousands separators, floats with 4 significant digits (3 decimals ≥ 1)."""
  if isinstance(value, bool) or value is None:
    return "" if value is None else str(value)
  if isinstance(value, int):
    return f"{value:,}"
  if isinstance(value, float):
    if math.isnan(value) or math.isinf(value):
      return str(value)
    if value != 0 and abs(value) < 1:
      return f"{value:.4g}"
    return f"{value:,.3f}" if abs(value) < 1e5 else f"{value:,.0f}"
  return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """Rows (dicts; the union of their keys, in first-seen order, are the columns) as a markdown table."""
  if not rows:
    raise ValueError("markdown_table: no rows")
  cols = columns(rows)
  cells = [[fmt(row.get(c)).replace("|", "\\|") for c in cols] for row in rows]
  lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
  lines += ["| " + " | ".join(r) + " |" for r in cells]
  return "\n".join(lines) + "\n"


def print_table(rows: Sequence[Mapping[str, Any]]) -> str:
  """Print ``rows`` as aligned columns (side by side) and return them as a markdown table."""
  cols = columns(rows)
  cells = [[fmt(row.get(c)) for c in cols] for row in rows]
  widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
  print("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
  print("  ".join("-" * w for w in widths))
  for r in cells:
    print("  ".join(v.rjust(w) if _numeric(v) else v.ljust(w) for v, w in zip(r, widths)))
  return markdown_table(rows)


def _numeric(s: str) -> bool:
  return bool(re.fullmatch(r"[-+]?[\d,]*\.?\d+(e[-+]?\d+)?", s))


def ratio(what: str, value: float) -> str:
  """Print (and return) ``ratio <what> <number>``: ours over the reference (speed) or reference over
  ours (memory) — higher is better either way. ``what`` is one word (no whitespace)."""
  if not what or re.search(r"\s", what):
    raise ValueError(f"ratio: 'what' must be one word without whitespace, got {what!r}")
  line = f"ratio {what} {value:.4g}"
  print(line, flush=True)
  return line


def environment() -> str:
  """One line naming the machine and the library versions (for a results section)."""
  parts = [_cpu_name(), f"{os.cpu_count()} CPUs",
           f"Python {platform.python_version()}"]
  for mod in ("jax", "flax", "torch", "transformers"):
    try:
      parts.append(f"{mod} {__import__(mod).__version__}")
    except ImportError:
      pass
  return ", ".join(parts)


def _cpu_name() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


BEGIN = "<!-- generated: the script rewrites this block on every run; text outside it is kept -->"
END = "<!-- end generated -->"


def record(section_title: str, markdown: str, path: str | os.PathLike = RESULTS) -> Path:
  """Write ``markdown`` as the generated block of the section ``## <section_title>`` of ``path``,
  atomically; nothing else is lost.

  The block sits between the `BEGIN` and `END` marker lines. A run replaces the section's block and
  keeps every line of the section around it (the analysis written by hand under a table); a section
  without a block (written before the markers, or by hand) gets one right under its heading, its
  text kept below it; a missing section is appended. A section runs from its ``## `` heading to the
  next ``## `` heading or the end of the file; the other sections are kept byte for byte.
  """
  if "\n" in section_title or not section_title.strip():
    raise ValueError(f"record: section title must be one non-empty line, got {section_title!r}")
  path = Path(path)
  text = path.read_text(encoding="utf-8") if path.exists() else HEADER
  heading = f"## {section_title.strip()}"
  block = [f"{BEGIN}\n", f"{markdown.strip()}\n", f"{END}\n"]
  lines = text.splitlines(keepends=True)
  start = next((i for i, l in enumerate(lines) if l.rstrip("\n") == heading), None)
  if start is None:
    return atomic.write_text(path, text.rstrip("\n") + "\n\n" + "".join([f"{heading}\n", "\n", *block]))
  end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
  body = lines[start + 1:end]
  marks = [i for i, l in enumerate(body) if l.rstrip("\n") in (BEGIN, END)]
  if len(marks) >= 2 and body[marks[0]].rstrip("\n") == BEGIN and body[marks[1]].rstrip("\n") == END:
    body = body[:marks[0]] + block + body[marks[1] + 1:]
  else:
    rest = "".join(body).strip("\n")
    body = ["\n", *block] + (["\n", rest + "\n"] if rest else [])
  tail = lines[end:]
  if tail and body and body[-1].strip():
    body.append("\n")
  return atomic.write_text(path, "".join(lines[:start + 1] + body + tail))


def gemm_rates(m: int = 1024, shapes=((576, 1536), (1536, 576), (576, 49152)), repeats: int = 10
               ) -> list[dict]:
  """float32 GEMM GFLOP/s of XLA:CPU and torch on ``m`` rows × the (K, N) ``shapes`` (a model's
  projections): why GEMM-bound runs differ. Alternating, best of ``repeats``."""
  import jax
  import jax.numpy as jnp
  import torch
  mm = jax.jit(jnp.matmul)
  out = []
  for k, n in shapes:
    a, b = jnp.ones((m, k)), jnp.ones((k, n))
    ta, tb = torch.ones(m, k), torch.ones(k, n)
    jax.block_until_ready(mm(a, b))
    tj, tt = [], []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(mm(a, b))
      tj.append(time.perf_counter() - t0)
      t0 = time.perf_counter()
      ta @ tb
      tt.append(time.perf_counter() - t0)
    flop = 2 * m * k * n / 1e9
    out.append({"GEMM (M x K x N)": f"{m}x{k}x{n}", "XLA:CPU GFLOP/s": flop / min(tj),
                "torch GFLOP/s": flop / min(tt), "XLA / torch": min(tt) / min(tj)})
  return out


def sft_step(model, mesh, host: Mapping[str, Any], *, scanned: bool, **model_attrs):
  """The benches' training step: ``model`` in the layout asked for (``model_attrs`` set on it, e.g.
  ``remat``, ``scan_unroll``), SFT, AdamW (lr 1e-5, no weight decay or clipping), float32, state
  donated; returns ``(step, state, batch)`` — ``step`` is the jitted function, not yet traced
  (bench/startup.py, bench/step_executable.py, bench/scan_levers.py)."""
  from elasticity import sharding as shd
  from elasticity.models.scan import to_layout
  from elasticity.train.losses import Objective
  from elasticity.train.optimizer import make_optimizer
  from elasticity.train.step import (batch_shardings, init_train_state, make_train_step, split_params,
                                     state_shardings)
  m = to_layout(model, scanned)
  for name, value in model_attrs.items():
    setattr(m, name, value)
  graphdef, params = split_params(m)
  tx, schedule = make_optimizer({"name": "adamw", "lr": 1e-5, "weight_decay": 0.0,
                                 "clip_norm": 0.0}, 100)
  _, sh = state_shardings(m, tx, mesh)
  state = init_train_state(params, tx, sh, seed=0)
  step = make_train_step(graphdef, Objective("sft", chunk_size=128), tx, schedule, mesh, sh,
                         batch_shardings(host, mesh))
  return step, state, shd.global_batch(host, mesh)


__all__ = ["print_table", "markdown_table", "ratio", "record", "environment", "fmt", "gemm_rates",
           "sft_step", "RESULTS"]
