"""Log hygiene for the launchers: Orbax's INFO records (a dozen lines per checkpoint: managers
created, barriers, finalize threads) are dropped, so a run's log shows its own progress.

Orbax logs through absl like everything else, to the ``absl`` logger; `quiet_orbax` adds a filter
there that drops records from files under an ``orbax`` package below ``WARNING``. Its warnings and
errors pass. The launchers' ``--orbax_info`` flag (``launch/app.py``) keeps everything.
"""

from __future__ import annotations

import logging
import os

_ORBAX = f"{os.sep}orbax{os.sep}"


class _DropOrbaxInfo(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or _ORBAX not in (record.pathname or "")


_FILTER = _DropOrbaxInfo()


def quiet_orbax(enable: bool = True) -> None:
  """Drop (``enable``) or keep Orbax's records below WARNING; idempotent."""
  logger = logging.getLogger("absl")
  logger.removeFilter(_FILTER)
  if enable:
    logger.addFilter(_FILTER)

