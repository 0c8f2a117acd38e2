"""Measure compression rates γ (bits/token, bits/byte, normalized) of a model on datasets.

    python -m launch.compress --config=configs/compress.py --config.model=PATH \
        --config.datasets=alpaca,truthfulqa --config.data_dir=DIR --workdir=OUT

Writes ``results.json``, ``results.csv`` and ``results.md`` under ``--workdir`` (each atomically),
with a progress bar per dataset (examples, tokens/s, ETA). With ``--config.baseline=PATH`` the
baseline checkpoint is measured on the same data and Δγ = model − baseline is reported too.
The config is checked (unknown keys, bad values, unknown datasets, missing files) before any model
is loaded or compiled. The work is done by `elasticity.compression.job`; this is its absl app, and it
writes ``results.md``.
"""

from __future__ import annotations

import os

import jax
from absl import flags, logging

from configs.compress import get_config
from elasticity import paths, report, sharding
from elasticity.compression import job as compression_job
from launch import app

_CONFIG = app.config_file(
    "config", str(paths.PROJECT_ROOT / "configs" / "compress.py"),
    "Measurement configuration (configs/compress.py).",
    keys=lambda: app.flat_keys(get_config()))   # overrides checked against configs/compress.py
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for results.json/.csv/.md.", required=True)


TABLE_COLUMNS = ("dataset", "checkpoint", "examples", "tokens", "bytes", "nats_per_token",
                 "bits_per_token", "bits_per_byte", "normalized", "skipped", "truncated")


def write_markdown(workdir: str, cfg, result: compression_job.JobResult) -> None:
  """results.md: the rates table (and Δγ with a baseline), atomically (`elasticity.report`)."""
  sections = [("Compression rates", "\n".join(
      ["Checkpoints: " + ", ".join(f"{k} = `{v}`" for k, v in result.checkpoints.items()) + ".",
       f"Template `{cfg.template}`, max_length {cfg.max_length}; normalized = bits/token − log₂ V.",
       "", report.markdown_table([{c: r[c] for c in TABLE_COLUMNS}
                                  for r in result.rows])]))]
  if result.deltas:
    sections.append(("Δγ (model − baseline)", report.markdown_table(result.deltas)))
  report.write_markdown(os.path.join(os.path.expanduser(workdir), "results.md"), sections)


def main(argv):
  del argv
  cfg = _CONFIG.value
  try:
    names = compression_job.validate(cfg, get_config())   # before any model is read or compiled
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  sharding.initialize_distributed()
  result = compression_job.run(cfg, names)
  if jax.process_index() == 0:
    compression_job.write_results(_WORKDIR.value, cfg, result)
    write_markdown(_WORKDIR.value, cfg, result)
  logging.info("results in %s", _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, orbax=False)
