"""JAX's persistent compilation cache: a second run with the same shapes loads executables from disk.

Every launcher turns it on before its first compilation (``launch/app.py`` defines the
``--compilation_cache=DIR|off`` flag and calls ``enable`` with it); tests and benchmarks call
``compile_cache.enable()`` themselves.

Where the cache lives, first match wins: ``enable(cache_dir)`` (the flag's value), then the
environment variable ``ELASTICITY_COMPILATION_CACHE``, then ``paths.cache_dir("jax")``
(``$XDG_CACHE_HOME/elasticity/jax``, default ``~/.cache/elasticity/jax``). The value ``off`` (also
``none``, ``false``, ``0``) turns it off. Every compilation is cached, however short or small, so CPU
runs and tests benefit too. Entries are keyed by JAX on the computation, the backend and the
jax/jaxlib versions, so a shared folder is safe.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from absl import logging

from elasticity import paths

ENV = "ELASTICITY_COMPILATION_CACHE"
_OFF = frozenset({"off", "none", "false", "0", "no"})


def default_dir() -> Path:
  """``$XDG_CACHE_HOME/elasticity/jax``, or ``~/.cache/elasticity/jax``."""
  return paths.cache_dir("jax")


def resolve(cache_dir: str | os.PathLike | None = None) -> Path | None:
  """The cache folder ``enable`` would use (None when turned off); see the module docstring."""
  setting = os.fspath(cache_dir) if cache_dir is not None else os.environ.get(ENV)
  if setting is None:
    return default_dir()
  if setting.strip().lower() in _OFF or not setting.strip():
    return None
  return Path(setting).expanduser()


def enable(cache_dir: str | os.PathLike | None = None) -> Path | None:
  """Turn the persistent cache on (call before the first compilation); returns its folder or None."""
  path = resolve(cache_dir)
  if path is None:
    logging.info("persistent compilation cache: off")
    return None
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    logging.warning("persistent compilation cache: cannot create %s (%s); running without it", path, e)
    return None
  jax.config.update("jax_compilation_cache_dir", str(path))
  # Cache everything: CPU compilations are short and small, and are what tests and laptops pay for.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  logging.info("persistent compilation cache: %s", path)
  return path

