"""Shared pytest fixtures: where ../shared is, and how tests that need it behave without it.

A test that needs a file from the shared folder is skipped with a reason when the folder is absent,
except under ``CI=true``, where a missing file is a failure.
"""

from __future__ import annotations

import os

# Eight fake CPU devices for mesh tests; must be set before jax initialises its backends.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402

from elasticity import paths  # noqa: E402


def require(path):
  """Return ``path`` if it exists; skip (or fail under CI=true) otherwise."""
  if os.path.exists(path):
    return path
  msg = f"shared artifact missing: {path} (set ELASTICITY_SHARED)"
  if os.environ.get("CI", "").lower() == "true":
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
    if os.environ.get("CI", "").lower() == "true":
      pytest.fail(str(e))
    pytest.skip(str(e))


@pytest.fixture(scope="session")
def smollm2_pair(smollm2_gguf):
  """(Flax port, transformers torch model) of SmolLM2-135M-Instruct, loaded once for the session."""
  import torch
  import transformers

  from elasticity.models import load_pretrained
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      smollm2_gguf.parent, gguf_file=smollm2_gguf.name, dtype=torch.float32).eval()
  return load_pretrained(smollm2_gguf), ref
