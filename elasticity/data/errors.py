"""The one error type for bad user data: it always names the file, the record and the field."""

from __future__ import annotations

import os


class DataError(ValueError):
  """A bad record in user data.

  ``str(err)`` reads ``"<file>, <unit> <record>, field '<field>': <msg>"``, e.g.
  ``"data/x.jsonl, line 12, field 'response': empty response"``.

  Attributes:
    file: the file (or a source label such as ``"hf:imdb[train]"``, or ``"<memory>"``).
    record: the 1-based record number (line, row, array element) or a name (a tar member).
    field: the field at fault; ``None`` when the whole record is (e.g. a malformed JSON line).
    msg: what is wrong.
    unit: what ``record`` counts: ``"line"``, ``"row"``, ``"record"``, ``"member"``.
  """

  def __init__(self, file: str | os.PathLike | None, record: int | str | None,
               field: str | None, msg: str, *, unit: str = "record"):
    self.file = "<memory>" if file is None else os.fspath(file)
    self.record = record
    self.field = field
    self.msg = msg
    self.unit = unit
    super().__init__(self._render())

  def _render(self) -> str:
    field = "(whole record)" if self.field is None else f"field {self.field!r}"
    return f"{self.file}, {self.unit} {self.record}, {field}: {self.msg}"

  def __str__(self) -> str:
    return self._render()

  def __reduce__(self):
    return (_rebuild, (self.file, self.record, self.field, self.msg, self.unit))


def _rebuild(file, record, field, msg, unit) -> DataError:
  return DataError(file, record, field, msg, unit=unit)
