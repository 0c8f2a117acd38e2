"""Shared pytest fixtures: where ../shared is, and how tests that need it behave without it.

A test that needs a file from the shared folder is skipped with a reason when the folder is absent,
except under CI (``CI`` set to ``1``, ``true`` or ``yes``), where a missing file is a failure.

The suite runs with the persistent compilation cache (`elasticity.compile_cache`; its folder from
``ELASTICITY_COMPILATION_CACHE``, ``off`` to turn it off), so a second run skips most compilation.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Eight fake CPU devices for mesh tests; must be set before jax initialises its backends. Appended to
# the user's own XLA_FLAGS (a device count already there wins).
_DEVICES_FLAG = "--xla_force_host_platform_device_count"
if _DEVICES_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES_FLAG}=8".strip()
# The suite is CPU-only: with libtpu installed (the `test` extra brings it for the AOT tests, which
# compile for TPU topologies without a TPU backend) JAX would otherwise try to start a TPU backend in
# every process and log errors. A run that chooses its platforms (bench/device_check.sh) keeps them.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The AOT tests load libtpu in this process; a killed earlier process can leave libtpu's lockfile in
# /tmp, which would make them fail (launch.aot sets the same for itself).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402

from elasticity import compile_cache, paths  # noqa: E402

compile_cache.enable()
ROOT = Path(__file__).resolve().parent.parent


def in_ci() -> bool:
  """``CI`` set to a true value (``1``, ``true``, ``yes``; any case), as CI services do."""
  return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(path):
  """Return ``path`` if it exists; skip (or fail under CI) otherwise."""
  if os.path.exists(path):
    return path
  msg = f"shared artifact missing: {path} (set ELASTICITY_SHARED)"
  if in_ci():
    pytest.fail(msg)
  pytest.skip(msg)


@pytest.fixture
def shared():
  """The shared folder as a ``Path``; skips (fails under CI) when absent."""
  return require(paths.shared_dir())


@pytest.fixture(scope="session")
def smollm2_gguf():
  try:
    return paths.smollm2_gguf()
  except FileNotFoundError as e:
    if in_ci():
      pytest.fail(str(e))
    pytest.skip(str(e))


@pytest.fixture(scope="session")
def smollm2_pair(smollm2_gguf):
  """(Flax port, transformers torch model) of SmolLM2-135M-Instruct, loaded once for the session."""
  import torch
  import transformers

  from elasticity.convert import load_pretrained
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32).eval()
  return load_pretrained(smollm2_gguf), ref


def resistance_cmd(workdir, variant: str = "tiny", *extra: str) -> list[str]:
  """``launch.experiment`` on a resistance preset: the command the resistance and shard tests run."""
  return [sys.executable, "-m", "launch.experiment",
          f"--config=configs/experiments/resistance.py:{variant}", f"--workdir={workdir}", *extra]


@pytest.fixture(scope="session")
def tiny_resistance_run(tmp_path_factory):
  """The workdir of one uninterrupted ``launch.experiment`` run of the ``tiny`` resistance grid, made
  once for the session (about a CPU-minute): the reference that the resistance tests read and that
  the SIGKILLed rerun and the two-shard run must reproduce byte for byte. Tests only read it."""
  workdir = tmp_path_factory.mktemp("resistance") / "run"
  proc = subprocess.run(resistance_cmd(workdir), cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return workdir
