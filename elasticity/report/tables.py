"""Results rows (dicts) as JSON, CSV and markdown tables, each written through `elasticity.atomic`,
so a reader never sees a half-written file and a crash leaves the previous one intact."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from elasticity import atomic


def columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """The union of the rows' keys, in first-seen order."""
  out: list[str] = []
  for row in rows:
    out.extend(k for k in row if k not in out)
  return out


def _cell(value: Any, digits: int) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
  return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]], *, digits: int = 4) -> str:
  """A markdown table of ``rows`` (floats with ``digits`` decimals; ``|`` escaped)."""
  if not rows:
    raise ValueError("markdown_table: no rows")
  cols = columns(rows)
  lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(_cell(row.get(c), digits).replace("|", "\\|") for c in cols) + " |")
  return "\n".join(lines) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
  """``obj`` as indented JSON (NaN/inf written as null: strict JSON readers accept the file)."""
  def clean(x):
    if isinstance(x, float) and not math.isfinite(x):
      return None
    if isinstance(x, Mapping):
      return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [clean(v) for v in x]
    return x
  return atomic.write_text(path, json.dumps(clean(obj), indent=2, ensure_ascii=False) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
  """``rows`` as CSV with a header (the union of their keys; full float precision)."""
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=columns(rows), lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
  return atomic.write_text(path, buf.getvalue())


def write_markdown(path: str | os.PathLike, sections: Sequence[tuple[str, str]]) -> Path:
  """``(heading, body)`` sections as one markdown file."""
  text = "\n".join(f"## {title}\n\n{body.rstrip()}\n" for title, body in sections)
  return atomic.write_text(path, text)
