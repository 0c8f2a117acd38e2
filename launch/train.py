"""Train (SFT, DPO, SimPO, KTO) from a config file: one command from a laptop CPU to a TPU pod or GPU cluster.

    python -m launch.train --config=configs/sft.py:tiny --workdir=/tmp/tiny
    python -m launch.train --config=configs/sft.py:llama2-7b,alpaca,forward --workdir=/gcs/bucket/run
    python -m launch.train --config=configs/sft.py:tiny --workdir=DIR --config.train.num_steps=50

Every process of a multi-host job runs this same command (launch/tpu/, launch/slurm/). Unknown or
invalid config keys fail before anything is loaded or compiled, with a message naming the key. A
run whose workdir already holds checkpoints continues from the latest one (the same config, up to
the keys `elasticity.train.record.RESUMABLE_KEYS` lists); a finished one is left as it is.

The launcher owns what is process-wide: ``jax_threefry_partitionable`` (random numbers that do not
depend on the sharding; set by `launch.app.run`) and the SIGTERM/SIGINT handlers
(`elasticity.train.signals.StopOnSignal`: a preemption notice or Ctrl-C saves a checkpoint after the
current step and exits with status 3 (`launch.app.EXIT_PREEMPTED`) and "preempted" in the log; run
the same command again to
continue).
"""

from __future__ import annotations

import sys

from absl import flags, logging

from elasticity.train import config as config_lib
from elasticity.train.loop import train
from elasticity.train.signals import StopOnSignal
from launch import app

_CONFIG = app.config_file("config", None, "Training config file (configs/<x>.py:<variant>).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the HF export.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  cfg = _CONFIG.value
  try:
    config_lib.validate(cfg)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  logging.info("config: %s of %s, %s steps (the whole config: %s/config.json)",
               cfg.objective.name, cfg.model.path or "a random model", cfg.train.num_steps,
               _WORKDIR.value)
  logging.debug("config:\n%s", cfg)
  with StopOnSignal() as stop:
    result = train(cfg, _WORKDIR.value, stop=stop)
  logging.info("%s at step %d/%d; export: %s", result.status, result.step, result.total_steps,
               result.export_dir)
  if result.status == "preempted":
    sys.exit(app.EXIT_PREEMPTED)


if __name__ == "__main__":
  app.run(main, threefry=True)
