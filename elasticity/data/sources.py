"""Where raw records come from: local files (JSON, JSONL, JSONL.GZ, CSV, Parquet), HF, TFDS.

Every reader yields ``Row(number, value | error)`` with 1-based record numbers (JSONL: line; CSV and
Parquet: data row; JSON: array element), so a bad record is reported where a person would look for
it. Text is decoded with ``errors="surrogateescape"``: undecodable bytes survive reading and are
reported against the field that holds them (``records.text_field``) instead of failing the whole
file. The Hugging Face ``datasets`` and TFDS readers are used only when a caller asks for them
(``source="hf"``/``"tfds"``) on a machine that is online; tests never need them.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from elasticity.data.errors import DataError
from elasticity.data.records import RESPONSE_FIELDS, Row, get_field, text_field

FORMATS = ("json", "jsonl", "csv", "parquet")
UNITS = {"json": "record", "jsonl": "line", "csv": "row", "parquet": "row"}


def file_format(path: str | os.PathLike) -> str:
  """``"json"``, ``"jsonl"``, ``"csv"`` or ``"parquet"`` from the file name (``.gz`` allowed)."""
  name = Path(path).name.lower()
  if name.endswith(".gz"):
    name = name[:-3]
  for fmt, exts in (("jsonl", (".jsonl", ".ndjson")), ("json", (".json",)), ("csv", (".csv",)),
                    ("parquet", (".parquet",))):
    if name.endswith(exts):
      return fmt
  raise ValueError(f"{path}: cannot tell the format from the name; pass format= one of {FORMATS}")


def _open_bytes(path: Path):
  if path.name.lower().endswith(".gz"):
    return gzip.open(path, "rb")
  return open(path, "rb")


def iter_jsonl(path: str | os.PathLike) -> Iterator[Row]:
  """One JSON object per line (optionally gzipped); blank lines are not records."""
  path = Path(path)
  with _open_bytes(path) as f:
    for n, raw in enumerate(f, 1):
      line = raw.decode("utf-8", errors="surrogateescape")
      if n == 1 and line.startswith("\ufeff"):
        line = line[1:]
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        yield Row(n, error=DataError(path, n, None, f"malformed JSON: {e.msg} at column {e.colno}",
                                     unit="line"))
        continue
      if not isinstance(obj, dict):
        yield Row(n, error=DataError(path, n, None,
                                     f"expected a JSON object, got {type(obj).__name__}",
                                     unit="line"))
        continue
      yield Row(n, obj)


def iter_json(path: str | os.PathLike) -> Iterator[Row]:
  """A JSON array of objects (optionally gzipped), numbered by array element from 1."""
  path = Path(path)
  with _open_bytes(path) as f:
    text = f.read().decode("utf-8", errors="surrogateescape")
  if text.startswith("\ufeff"):
    text = text[1:]
  try:
    data = json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(path, e.lineno, None, f"malformed JSON: {e.msg} at column {e.colno}",
                    unit="line") from None
  if not isinstance(data, list):
    raise DataError(path, 1, None, f"expected a JSON array of objects, got {type(data).__name__}",
                    unit="line")
  for n, obj in enumerate(data, 1):
    if not isinstance(obj, dict):
      yield Row(n, error=DataError(path, n, None,
                                   f"expected a JSON object, got {type(obj).__name__}"))
    else:
      yield Row(n, obj)


def iter_csv(path: str | os.PathLike, **csv_kw) -> Iterator[Row]:
  """A CSV file with a header row (a UTF-8 BOM is dropped); rows numbered from 1 after the header."""
  path = Path(path)
  with _open_bytes(path) as f:
    text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text, **csv_kw)
    try:
      header = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      raise DataError(path, 0, None, f"malformed CSV header: {e}", unit="row") from None
    width = len(header)
    n = 0
    while True:
      try:
        cells = next(reader)
      except StopIteration:
        return
      except csv.Error as e:
        n += 1
        yield Row(n, error=DataError(path, n, None, f"malformed CSV: {e}", unit="row"))
        continue
      if not cells:
        continue  # a blank line is not a record
      n += 1
      if len(cells) != width:
        yield Row(n, error=DataError(path, n, None,
                                     f"{len(cells)} columns, but the header has {width}",
                                     unit="row"))
        continue
      yield Row(n, dict(zip(header, cells)))


def iter_parquet(path: str | os.PathLike) -> Iterator[Row]:
  """A Parquet file, numbered by row from 1."""
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  table = pq.read_table(str(path))
  for n, obj in enumerate(table.to_pylist(), 1):
    yield Row(n, obj)


def iter_file(path: str | os.PathLike,
              format: str | None = None) -> Iterator[Row]:  # pylint: disable=redefined-builtin
  """Rows of a local file in any supported format (from the name unless ``format`` is given)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no data file at {path}")
  fmt = format or file_format(path)
  readers = {"json": iter_json, "jsonl": iter_jsonl, "csv": iter_csv, "parquet": iter_parquet}
  if fmt not in readers:
    raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")
  return readers[fmt](path)


def map_fields(row: Row, fields: Mapping[str, str], *, file: str, unit: str,
               text_fields: set[str] | frozenset[str],
               allow_empty: set[str] | frozenset[str] = frozenset(),
               optional: set[str] | frozenset[str] = frozenset()) -> dict:
  """``{target: raw[source]}`` for every ``target: source`` of ``fields``, validated.

  Args:
    row: the raw record.
    fields: target name -> source key (dotted keys reach into nested objects).
    file, unit: for error messages.
    text_fields: targets that must be valid, non-empty strings.
    allow_empty: text targets that may be empty strings.
    optional: targets that may be missing (left out of the result, never defaulted).
  """
  out: dict[str, Any] = {}
  for target, key in fields.items():
    found, value = get_field(row.value, key)
    if not found:
      if target in optional:
        continue
      raise DataError(file, row.number, key, "missing field", unit=unit)
    if target in text_fields:
      value = text_field(value, file=file, record=row.number, field=key, unit=unit,
                         allow_empty=target in allow_empty, is_response=target in RESPONSE_FIELDS)
    elif isinstance(value, str):
      text_field(value, file=file, record=row.number, field=key, unit=unit, allow_empty=True)
    out[target] = value
  return out


# --------------------------------------------------------------------------------------------------
# Online sources (used only when asked for; never in tests)
# --------------------------------------------------------------------------------------------------


def iter_hf(name: str, *, split: str, config: str | None = None, **kw) -> Iterator[Row]:
  """Rows of a Hugging Face ``datasets`` dataset (downloads unless cached; needs the network)."""
  import datasets  # pylint: disable=import-outside-toplevel
  ds = datasets.load_dataset(name, config, split=split, **kw)
  for n, obj in enumerate(ds, 1):
    yield Row(n, dict(obj))


def iter_tfds(name: str, *, split: str, data_dir: str | None = None) -> Iterator[Row]:
  """Rows of a TFDS dataset; byte strings are decoded as UTF-8 (surrogateescape, checked later)."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  ds = tfds.load(name, split=split, data_dir=data_dir)
  for n, ex in enumerate(tfds.as_numpy(ds), 1):
    yield Row(n, {k: (v.decode("utf-8", errors="surrogateescape") if isinstance(v, bytes)
                      else v.item() if hasattr(v, "item") else v) for k, v in ex.items()})
