"""Reading an experiment's results: validated rows from ``results.jsonl``, and mean ± s.d. over seeds.

The runner writes one JSON row per (cell, evaluation point) (see `Row`). Every row is checked when it
is read; a bad one raises `ResultsError` naming the file, the line and the field, e.g.
``runs/x/results.jsonl: line 7: field 'coords.n_neg': expected an integer, got '25'``.

Several files can be read as one (the shards of a grid run on several machines): a row that appears
twice with the same metrics is kept once; the same (cell, point, seed) with different metrics is an
error naming both places.

Aggregation over seeds (`aggregate`) groups rows by their coordinates and reports the mean and the
sample standard deviation (ddof = 1; ``None`` for a single seed) of each metric, skipping rows where the
metric is absent or null.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from absl import logging

Scalar = str | int | float | bool | None


class ResultsError(ValueError):
  """A results or experiment file that cannot be read; the message names the file, line and field."""


@dataclasses.dataclass(frozen=True)
class Row:
  """One evaluation point of one cell.

  experiment: which experiment wrote it (``"rebound"``); selects the report builder.
  cell: the cell's id; parent: the id of the cell it started from (``None`` for a root).
  config_hash: the fingerprint of the cell's resolved config; seed: the cell's seed.
  point: the evaluation point's name within the cell (``"neg=25"``).
  coords: the grid coordinates (scalars), e.g. model, task, reverse, order, n_pos, n_neg, stage.
  metrics: the measured numbers; a value is a float, ``None`` (not measured) or a list of floats (a
    series, e.g. a loss curve).
  source: ``"<file>: line <n>"``, for error messages.
  """
  experiment: str
  cell: str
  parent: str | None
  config_hash: str | None
  seed: int | None
  point: str
  coords: Mapping[str, Scalar]
  metrics: Mapping[str, float | list[float] | None]
  source: str

  def metric(self, name: str) -> float | None:
    """The scalar metric ``name``, or ``None`` when it is absent, null or NaN."""
    value = self.metrics.get(name)
    if value is None:
      return None
    if isinstance(value, list):
      raise ResultsError(f"{self.source}: field 'metrics.{name}': expected a number, got a list")
    return None if math.isnan(value) else value

  def flat(self) -> dict[str, Any]:
    """The row as one flat dict (identity, coordinates, scalar metrics), for CSV and generic tables."""
    out: dict[str, Any] = {"experiment": self.experiment, "cell": self.cell, "parent": self.parent,
                           "config_hash": self.config_hash, "seed": self.seed, "point": self.point}
    for k, v in self.coords.items():
      out[k if k not in out else f"coords.{k}"] = v
    for k, v in self.metrics.items():
      if not isinstance(v, list):
        out[k if k not in out else f"metrics.{k}"] = v
    return out


def _present(v: Any) -> bool:
  """A scalar metric value that was measured (not null, not NaN)."""
  return isinstance(v, float) and not math.isnan(v)


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool)


def _type(x: Any) -> str:
  return "null" if x is None else f"{type(x).__name__} {json.dumps(x)[:40]}"


def parse_row(obj: Any, source: str) -> Row:
  """Validate one decoded JSON line; ``source`` (``"<file>: line <n>"``) prefixes every error."""
  def bad(field: str, want: str, got: Any) -> ResultsError:
    return ResultsError(f"{source}: field {field!r}: expected {want}, got {_type(got)}")

  if not isinstance(obj, dict):
    raise ResultsError(f"{source}: expected a JSON object, got {_type(obj)}")
  for field in ("experiment", "cell", "point"):
    if field not in obj:
      raise ResultsError(f"{source}: missing field {field!r}")
    if not isinstance(obj[field], str) or not obj[field]:
      raise bad(field, "a non-empty string", obj[field])
  for field in ("parent", "config_hash"):
    if obj.get(field) is not None and not isinstance(obj[field], str):
      raise bad(field, "a string or null", obj[field])
  seed = obj.get("seed")
  if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
    raise bad("seed", "an integer or null", seed)
  coords = obj.get("coords", {})
  if not isinstance(coords, dict):
    raise bad("coords", "an object", coords)
  for k, v in coords.items():
    if not (v is None or isinstance(v, (str, int, float, bool))):
      raise bad(f"coords.{k}", "a string, number, boolean or null", v)
  metrics = obj.get("metrics")
  if metrics is None:
    metrics = {}
  if not isinstance(metrics, dict):
    raise bad("metrics", "an object", metrics)
  clean: dict[str, float | list[float] | None] = {}
  for k, v in metrics.items():
    if v is None or _is_number(v):
      clean[k] = None if v is None else float(v)
    elif isinstance(v, list) and all(_is_number(x) for x in v):
      clean[k] = [float(x) for x in v]
    else:
      raise bad(f"metrics.{k}", "a number, null or a list of numbers", v)
  return Row(experiment=obj["experiment"], cell=obj["cell"], parent=obj.get("parent"),
             config_hash=obj.get("config_hash"), seed=seed, point=obj["point"], coords=dict(coords),
             metrics=clean, source=source)


def read_rows(path: str | os.PathLike) -> list[Row]:
  """Every row of one JSON-lines results file (blank lines ignored); a bad line raises ResultsError."""
  path = Path(path)
  if not path.is_file():
    raise ResultsError(f"{path}: no such results file")
  rows = []
  with open(path, "rb") as f:
    for i, raw in enumerate(f, 1):
      source = f"{path}: line {i}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise ResultsError(f"{source}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})"
                           ) from None
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise ResultsError(f"{source}: not valid JSON ({e.msg} at column {e.colno})") from None
      rows.append(parse_row(obj, source))
  return rows


def load_rows(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Row]:
  """The rows of one or several results files, in order, with exact duplicates dropped.

  The same (cell, point, seed) twice with different metrics or coordinates raises ResultsError.
  """
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  seen: dict[tuple, Row] = {}
  out = []
  for path in paths:
    for row in read_rows(path):
      key = (row.experiment, row.cell, row.point, row.seed)
      if key in seen:
        first = seen[key]
        if (first.metrics, first.coords) != (row.metrics, row.coords):
          raise ResultsError(f"{row.source}: cell {row.cell!r} point {row.point!r} seed {row.seed} "
                             f"already read from {first.source} with other metrics or coordinates")
        continue
      seen[key] = row
      out.append(row)
  return out


def with_metrics(rows: Iterable[Row]) -> list[Row]:
  """The rows that carry at least one metric; the others are logged and skipped."""
  out = []
  for row in rows:
    if any(_present(v) or (isinstance(v, list) and v) for v in row.metrics.values()):
      out.append(row)
    else:
      logging.warning("%s: cell %s point %s has no metrics; skipped", row.source, row.cell, row.point)
  return out


@dataclasses.dataclass(frozen=True)
class Stat:
  """Mean, sample s.d. (``None`` for n = 1) and number of seeds of one metric at one point."""
  mean: float
  sd: float | None
  n: int

  def __str__(self) -> str:
    return fmt(self)


def mean_sd(values: Sequence[float]) -> Stat | None:
  """Mean and sample standard deviation (ddof = 1) of ``values``; ``None`` if there are none."""
  values = [float(v) for v in values]
  if not values:
    return None
  n = len(values)
  mean = math.fsum(values) / n
  sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
  return Stat(mean, sd, n)


def fmt(stat: Stat | None, digits: int = 4) -> str:
  """``"0.7100 ± 0.0100"`` (or just the mean for one seed; ``"–"`` when absent)."""
  if stat is None:
    return "–"
  if stat.sd is None:
    return f"{stat.mean:.{digits}f}"
  return f"{stat.mean:.{digits}f} ± {stat.sd:.{digits}f}"


def coord_key(row: Row, keys: Sequence[str]) -> tuple:
  """The values of ``keys`` in ``row.coords`` (missing ones as ``None``), as a hashable tuple."""
  return tuple(row.coords.get(k) for k in keys)


def aggregate(rows: Iterable[Row], keys: Sequence[str], metric: str) -> dict[tuple, Stat]:
  """``{coord_key: Stat}`` of ``metric`` over the rows sharing the coordinates ``keys`` (the seeds).

  Rows without the metric do not count; keys with no value at all are left out.
  """
  groups: dict[tuple, list[float]] = {}
  for row in rows:
    value = row.metric(metric)
    if value is not None:
      groups.setdefault(coord_key(row, keys), []).append(value)
  return {k: mean_sd(v) for k, v in groups.items()}


def metric_names(rows: Iterable[Row]) -> list[str]:
  """The scalar metrics present (non-null) in any row, in first-seen order."""
  out: list[str] = []
  for row in rows:
    out.extend(k for k, v in row.metrics.items() if k not in out and _present(v))
  return out


def read_experiment(path: str | os.PathLike) -> dict[str, Any]:
  """``experiment.json`` as a dict ({} when the file does not exist)."""
  path = Path(path)
  if not path.exists():
    return {}
  try:
    obj = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ResultsError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
  if not isinstance(obj, dict):
    raise ResultsError(f"{path}: expected a JSON object, got {_type(obj)}")
  for field in ("name", "variant", "git_commit"):
    if obj.get(field) is not None and not isinstance(obj[field], str):
      raise ResultsError(f"{path}: field {field!r}: expected a string, got {_type(obj[field])}")
  for field in ("config", "versions"):
    if obj.get(field) is not None and not isinstance(obj[field], dict):
      raise ResultsError(f"{path}: field {field!r}: expected an object, got {_type(obj[field])}")
  return obj


def report_option(experiment: Mapping[str, Any], key: str, default: Any, *, source: str) -> Any:
  """``experiment["config"]["report"][key]`` or ``default``; ``source`` names the file in errors."""
  report = (experiment.get("config") or {}).get("report")
  if report is None:
    return default
  if not isinstance(report, dict):
    raise ResultsError(f"{source}: field 'config.report': expected an object, got {_type(report)}")
  return report.get(key, default)
