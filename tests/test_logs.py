"""The launchers' log filter: Orbax's INFO records dropped, its warnings and everything else kept."""

import logging

import orbax.checkpoint as ocp
from absl import logging as absl_logging

from elasticity import logs


def _orbax_records(caplog):
  return [r for r in caplog.records if "/orbax/" in r.pathname]


def test_orbax_info_is_dropped_and_ours_and_orbax_warnings_kept(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  try:
    logs.quiet_orbax(False)
    ocp.CheckpointManager(tmp_path / "a", options=ocp.CheckpointManagerOptions(create=True)).close()
    assert any(r.levelno == logging.INFO for r in _orbax_records(caplog))   # orbax does talk
    caplog.clear()
    logs.quiet_orbax()
    logs.quiet_orbax()                                   # idempotent: one filter
    assert sum(isinstance(f, logs._DropOrbaxInfo) for f in logging.getLogger("absl").filters) == 1
    ocp.CheckpointManager(tmp_path / "b", options=ocp.CheckpointManagerOptions(create=True)).close()
    absl_logging.info("our own progress line")
    assert not [r for r in _orbax_records(caplog) if r.levelno < logging.WARNING]
    assert [r.getMessage() for r in caplog.records] == ["our own progress line"]
    record = logging.LogRecord("absl", logging.WARNING, "/x/site-packages/orbax/checkpoint/y.py", 1,
                               "a warning", None, None)
    assert logs._FILTER.filter(record)
  finally:
    logs.quiet_orbax(False)
