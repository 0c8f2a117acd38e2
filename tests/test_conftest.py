"""The test harness itself: fake devices appended to a user's XLA_FLAGS, and what counts as CI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from elasticity import paths

import conftest


def test_fake_devices_are_added_to_the_users_xla_flags():
  code = ("import sys, os; sys.path.insert(0, 'tests'); import conftest, jax; "
          "print(jax.device_count(), os.environ['XLA_FLAGS'])")
  env = {**os.environ, "XLA_FLAGS": "--xla_cpu_use_thunk_runtime=true", "JAX_PLATFORMS": "cpu",
         "ELASTICITY_COMPILATION_CACHE": "off"}
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=paths.PROJECT_ROOT, text=True,
                       capture_output=True, timeout=120, check=True).stdout.split()
  assert out[0] == "8"
  assert out[1:] == ["--xla_cpu_use_thunk_runtime=true", "--xla_force_host_platform_device_count=8"]


@pytest.mark.parametrize("value,ci", [("1", True), ("true", True), ("TRUE", True), ("yes", True),
                                      ("0", False), ("false", False), ("", False)])
def test_ci_values(monkeypatch, value, ci):
  monkeypatch.setenv("CI", value)
  assert conftest.in_ci() is ci
  if ci:
    with pytest.raises(pytest.fail.Exception, match="shared artifact missing"):
      conftest.require("/nonexistent/elasticity-artifact")
