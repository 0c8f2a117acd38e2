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

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from elasticity import compile_cache  # noqa: E402
from launch import overrides  # noqa: E402

from elasticity import paths, report  # noqa: E402
from elasticity.compression import job as compression_job  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(paths.PROJECT_ROOT / "configs" / "compress.py"),
    "Measurement configuration (configs/compress.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for results.json/.csv/.md.", required=True)
compile_cache.define_flags()


def _defaults():
  from configs.compress import get_config
  return get_config()


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with ``--config.<key>`` overrides checked against configs/compress.py first
  (ml_collections would otherwise fail with a bare ``AttributeError``)."""
  overrides.check(argv, compression_job.flat_keys(_defaults()))
  return flags.FLAGS(argv)


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
  compile_cache.enable_from_flags()
  del argv
  cfg = _CONFIG.value
  try:
    names = compression_job.validate(cfg, _defaults())   # before any model is read or compiled
  except ValueError as e:
    raise app.UsageError(str(e)) from None

  import jax

  from elasticity import sharding
  sharding.initialize_distributed()
  result = compression_job.run(cfg, names)
  if jax.process_index() == 0:
    compression_job.write_results(_WORKDIR.value, cfg, result)
    write_markdown(_WORKDIR.value, cfg, result)
  logging.info("results in %s", _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
