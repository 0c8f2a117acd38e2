"""The persistent compilation cache: where it lives, how it is turned off, and that a second process hits it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from absl import flags

from elasticity import compile_cache, paths
from launch import app as launch_app

# A child process: enable the cache (from the env), compile a tiny function, report JAX's cache events.
_CHILD = r"""
import json, sys
import jax, jax.numpy as jnp
from elasticity import compile_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
path = compile_cache.enable()
y = jax.jit(lambda x: jnp.tanh(x) * 3.0 + x.sum())(jnp.arange(7.0))
y.block_until_ready()
print(json.dumps({"path": str(path),
                  "hits": events.count("/jax/compilation_cache/cache_hits"),
                  "misses": events.count("/jax/compilation_cache/cache_misses")}))
"""


def _run_child(cache: Path) -> dict:
  env = {**os.environ, compile_cache.ENV: str(cache), "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)   # one device is enough
  out = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=paths.PROJECT_ROOT, text=True,
                       capture_output=True, timeout=120, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_loads_from_the_warm_cache(tmp_path):
  cache = tmp_path / "jax-cache"
  cold = _run_child(cache)
  assert cold["path"] == str(cache)
  assert cold["hits"] == 0 and cold["misses"] >= 1
  written = sorted(p.name for p in cache.iterdir())
  assert written, "the cold run wrote nothing to the cache"
  warm = _run_child(cache)
  assert warm["hits"] >= 1 and warm["misses"] == 0, warm
  assert sorted(p.name for p in cache.iterdir()) == written   # nothing recompiled, nothing new


def test_where_the_cache_lives(monkeypatch, tmp_path):
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compile_cache.resolve() == tmp_path / "xdg" / "elasticity" / "jax"
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert compile_cache.resolve() == tmp_path / "home" / ".cache" / "elasticity" / "jax"
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
  assert compile_cache.resolve() == tmp_path / "env"
  assert compile_cache.resolve(tmp_path / "flag") == tmp_path / "flag"   # the flag beats the env
  for off in ("off", "OFF", "none", "false", "0", ""):
    assert compile_cache.resolve(off) is None
    monkeypatch.setenv(compile_cache.ENV, off)
    assert compile_cache.resolve() is None
  assert compile_cache.enable("off") is None


def test_flag_is_defined_once_and_read(tmp_path):
  fv = flags.FlagValues()
  launch_app.define_flags(fv)
  launch_app.define_flags(fv)   # idempotent
  fv([sys.argv[0], "--compilation_cache=off"])
  assert fv[launch_app.CACHE_FLAG].value == "off"
  assert launch_app.enable_from_flags(fv) is None
