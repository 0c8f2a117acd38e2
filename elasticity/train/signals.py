"""Stop requests from signals: SIGTERM/SIGINT become a flag that a training loop polls.

    from elasticity.train.signals import StopOnSignal
    with StopOnSignal() as stop:
      result = train(cfg, workdir, stop=stop)      # stop() is True once a signal arrived

The library never installs signal handlers itself (`elasticity.train.loop.train` takes a ``stop``
callable); the launcher, or an experiment runner that trains many cells in one process, owns them.
A TPU preemption notice, Ctrl-C and SLURM's time-limit warning all arrive as SIGTERM or SIGINT: the
loop then saves a checkpoint after the current step and returns ``status="preempted"``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence
from typing import Any

from absl import logging


class StopOnSignal:
  """A context manager turning ``signals`` into ``.requested = True``; handlers restored on exit.

  The object is callable (``stop() -> bool``), the form `train(..., stop=...)` polls. Outside the
  main thread Python cannot install handlers: the flag then only changes by `request`.
  """

  def __init__(self, signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)):
    self.signals = tuple(signals)
    self.requested = False
    self._old: dict[int, Any] = {}

  def __enter__(self) -> StopOnSignal:
    if threading.current_thread() is threading.main_thread():
      for sig in self.signals:
        self._old[sig] = signal.signal(sig, self._handle)
    else:
      logging.warning("StopOnSignal: not in the main thread; signal handlers not installed")
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    logging.warning("received signal %d: saving a checkpoint after this step, then stopping", signum)
    self.requested = True

  def request(self) -> None:
    """Ask the loop to stop after the current step, as a signal would."""
    self.requested = True

  def __call__(self) -> bool:
    return self.requested

  def __exit__(self, *exc) -> None:
    for sig, old in self._old.items():
      signal.signal(sig, old)
    self._old.clear()
