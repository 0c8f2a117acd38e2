"""Data-size checks of a preset against the files it reads: `DataSizeError`, one line naming the
preset, the dataset, the number needed, the number available and the config key that changes it."""

from __future__ import annotations

from elasticity.data import DataError


class DataSizeError(DataError):
  """A preset asks for more records than its files hold; a `DataError`, so the launchers print it as
  one ``FATAL:`` line (no traceback)."""

  def __init__(self, msg: str):
    ValueError.__init__(self, msg)
    self.file, self.record, self.field, self.msg, self.unit = "<config>", None, None, msg, "record"

  def _render(self) -> str:
    return self.msg

  def __reduce__(self):
    return (DataSizeError, (self.msg,))


def need(c, dataset: str, what: str, needed: int, available: int, key: str) -> None:
  """Raise `DataSizeError` when ``needed > available`` (``c``: the experiment config, for its preset)."""
  if needed > available:
    raise DataSizeError(f"preset {c.variant or c.model.name!r}: dataset {dataset}: {needed} {what} "
                        f"needed, {available} available (config.{key})")
