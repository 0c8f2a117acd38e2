"""Record schemas, field validation, and the list type that loaders return.

Records are plain dicts. One schema per kind:

* ``"sft"`` (instruction/response): ``{"prompt", "response"}``
* ``"preference"``: ``{"prompt", "chosen", "rejected"}``
* ``"text"`` (plain text): ``{"text"}``
* ``"prompt"`` (prompts only, for generation): ``{"prompt"}``

plus optional label keys where the source has them (``label``, ``rating``, ``category``, ``safe``,
``correct_answers``, ``incorrect_answers``, ...) and provenance (``source_file``; ``source_index``,
the 0-based position of the record among the source's records).

Validation never turns a missing value into an empty string: a missing field, a null, a non-string,
text that is not valid UTF-8, or (unless allowed) an empty response is a ``DataError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from absl import logging

from elasticity.data.errors import DataError

KINDS: dict[str, tuple[str, ...]] = {
    "sft": ("prompt", "response"),
    "preference": ("prompt", "chosen", "rejected"),
    "text": ("text",),
    "prompt": ("prompt",),
}
# Boolean words in text sources (CSV cells, JSON strings), lower-cased: BeaverTails' is_safe, KTO labels.
BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# Fields that a model is trained/scored on; only these may be allowed to be empty.
RESPONSE_FIELDS = frozenset({"response", "chosen", "rejected", "text"})
ON_ERROR = ("raise", "skip")


def utf8_bytes(text: str) -> int:
  """Number of UTF-8 bytes of ``text`` (the unit of bits/byte)."""
  return len(text.encode("utf-8"))


def kind_of(fields: Iterable[str]) -> str:
  """The record kind implied by a set of field names (preference > sft > text > prompt)."""
  fields = set(fields)
  for kind in ("preference", "sft", "text", "prompt"):
    if set(KINDS[kind]) <= fields:
      return kind
  raise ValueError(f"fields {sorted(fields)} match no record kind; need one of "
                   + ", ".join(f"{k}={list(v)}" for k, v in KINDS.items()))


@dataclass(frozen=True)
class Row:
  """One raw record from a source: its 1-based number, and either a value or the error reading it."""
  number: int | str
  value: Any = None
  error: DataError | None = None


class Records(list):
  """A ``list`` of record dicts that also says what was skipped while loading.

  Attributes:
    kind: the record kind (a key of ``KINDS``).
    source: where the records came from (a path or a label).
    skipped: the ``DataError`` of every record skipped under ``on_error="skip"``.
  """

  def __init__(self, items: Iterable[dict] = (), *, kind: str, source: str,
               skipped: Iterable[DataError] = ()):
    super().__init__(items)
    self.kind = kind
    self.source = source
    self.skipped: list[DataError] = list(skipped)

  @property
  def n_skipped(self) -> int:
    return len(self.skipped)


def text_field(value: Any, *, file: str, record: int | str, field: str, unit: str = "record",
               allow_empty: bool = False, missing: bool = False,
               is_response: bool | None = None) -> str:
  """``value`` if it is a valid, non-empty string; else a ``DataError`` naming file/record/field.

  Strings read with ``errors="surrogateescape"`` carry undecodable bytes as lone surrogates; they
  are reported here with the offending bytes. ``is_response`` (default: ``field`` is a response
  field name) only changes the wording of the empty-value error.
  """
  def err(msg: str) -> DataError:
    return DataError(file, record, field, msg, unit=unit)

  if missing:
    raise err("missing field")
  if value is None or (isinstance(value, float) and math.isnan(value)):
    raise err("missing value (null)")
  if not isinstance(value, str):
    raise err(f"expected a string, got {type(value).__name__}")
  check_utf8(value, file=file, record=record, field=field, unit=unit)
  if not allow_empty and not value.strip():
    if is_response is None:
      is_response = field in RESPONSE_FIELDS
    raise err("empty response (pass allow_empty=True to keep such records, or on_error='skip')"
              if is_response else "empty text")
  return value


def check_utf8(value: str, *, file: str, record: int | str, field: str, unit: str) -> None:
  """Raise if ``value`` holds lone surrogates (undecodable bytes under surrogateescape)."""
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    bad = value[e.start:e.end]
    raw = bytes(ord(c) - 0xDC00 for c in bad if 0xDC80 <= ord(c) <= 0xDCFF)
    detail = f"bytes {raw!r}" if raw else f"lone surrogate {bad!r}"
    raise DataError(file, record, field,
                    f"not valid UTF-8: {detail} at character {e.start}", unit=unit) from None


def get_field(obj: Any, key: str) -> tuple[bool, Any]:
  """``(found, value)`` for ``key`` in ``obj``; dotted keys (``"a.b"``) reach into nested dicts."""
  cur = obj
  for part in key.split("."):
    if not isinstance(cur, dict) or part not in cur:
      return False, None
    cur = cur[part]
  return True, cur


def collect(rows: Iterable[Row], build: Callable[[Row], dict | None], *, kind: str, source: str,
            on_error: str) -> Records:
  """Build records from ``rows``; raise on the first bad one, or skip and count under ``"skip"``.

  ``build`` may return ``None`` for a record that is legitimately not wanted (a label filter).
  Every record gets ``source_file`` (``source``) and ``source_index`` (its 0-based position among
  the source's records, bad ones included) unless ``build`` set them.
  """
  if on_error not in ON_ERROR:
    raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
  out = Records(kind=kind, source=source)
  for position, row in enumerate(rows):
    try:
      if row.error is not None:
        raise row.error
      rec = build(row)
    except DataError as e:
      if on_error == "raise":
        raise
      out.skipped.append(e)
      continue
    if rec is not None:
      rec.setdefault("source_file", source)
      rec.setdefault("source_index", position)
      out.append(rec)
  if out.skipped:
    logging.warning("%s: skipped %d bad record(s); first: %s", source, len(out.skipped), out.skipped[0])
  return out


def where(example: dict, position: int) -> tuple[str, int]:
  """``(file, 1-based record number)`` of an in-memory record, for error messages."""
  file = example.get("source_file") if isinstance(example, dict) else None
  idx = example.get("source_index") if isinstance(example, dict) else None
  if isinstance(idx, int):
    return (file or "<memory>"), idx + 1
  return (file or "<memory>"), position + 1


def iter_numbered(values: Iterable[Any]) -> Iterator[Row]:
  """Rows numbered from 1 over already-parsed values (e.g. a Hugging Face dataset)."""
  for i, v in enumerate(values, 1):
    yield Row(i, v)
