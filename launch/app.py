"""The launchers' one entry point: ``app.run(main, ...)`` owns what is process-wide.

* **Environment defaults** (`ENV_DEFAULTS`: Hugging Face offline, transformers quiet), set when this
  module is imported, before jax or transformers is. ``launch/__init__.py`` imports this module, and
  Python runs a package's ``__init__`` before any module in it, so ``python -m launch.<x>`` (or any
  ``import launch.<x>``) has them before launch/<x>.py's first line: a launcher may import jax at its
  top.
* **Common flags** (`define_flags`): ``--compilation_cache=DIR|off`` (`elasticity.compile_cache`) and
  ``--orbax_info`` (keep Orbax's INFO records, dropped by `elasticity.logs.quiet_orbax` otherwise),
  applied first thing in ``main`` (`enable_from_flags`, `apply_flags`).
* **``jax_threefry_partitionable``** (``threefry=True``: random numbers that do not depend on the
  sharding), set before ``main`` runs.
* **``--config.<key>=value`` overrides that name no key**: a one-line ``FATAL`` naming the key, never
  a traceback. Config flags are defined with `config_file` (ml_collections' ``DEFINE_config_file``,
  locked). ml_collections raises a bare ``AttributeError: "'nokey'"`` for an override of a missing
  key, while the flag is defined (when it has a default and ``--config`` is not given) or while the
  flags are parsed (`parse_flags`); both become ``FATAL: --config.eval.nokey=3: config key
  'eval.nokey' does not exist``. A launcher that knows its keys up front (``keys=``: its default
  config's) has them checked first, by `check_overrides`: ``FATAL: unknown config key
  'config.nrom' (from '--config.nrom=sqrt'); known keys: ...``.

    from launch import app
    _CONFIG = app.config_file("config", None, "Training config file (configs/<x>.py:<variant>).")
    ...
    if __name__ == "__main__":
      app.run(main, threefry=True)
"""

from __future__ import annotations

import os
import sys

ENV_DEFAULTS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
for _name, _value in ENV_DEFAULTS.items():
  os.environ.setdefault(_name, _value)

# pylint: disable=wrong-import-position
from collections.abc import Callable, Iterable, Mapping, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
from absl import app as absl_app  # noqa: E402
from absl import flags  # noqa: E402
from absl.app import UsageError  # noqa: E402,F401  (launchers raise app.UsageError)
from ml_collections import config_flags  # noqa: E402

from elasticity import compile_cache, logs  # noqa: E402

CACHE_FLAG = "compilation_cache"
ORBAX_FLAG = "orbax_info"

# The config flags `config_file` defines belong to the launcher that calls it (its --help lists them).
flags.disclaim_key_flags()


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, *, cache: bool = True,
                 orbax: bool = True) -> None:
  """Define ``--compilation_cache=DIR|off`` and ``--orbax_info`` (idempotent: launchers that share a
  process may all call it)."""
  if cache and CACHE_FLAG not in flag_values:
    flags.DEFINE_string(
        CACHE_FLAG, None, f"Persistent JAX compilation cache folder, or 'off' (default: "
        f"${compile_cache.ENV}, else {compile_cache.default_dir()}).", flag_values=flag_values,
        module_name=__name__)
  if orbax and ORBAX_FLAG not in flag_values:
    flags.DEFINE_bool(ORBAX_FLAG, False, "Keep Orbax's INFO log records (dropped by default).",
                      flag_values=flag_values, module_name=__name__)


def enable_from_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """`compile_cache.enable` with the value of ``--compilation_cache`` (`define_flags` must have run)."""
  return compile_cache.enable(flag_values[CACHE_FLAG].value)


def apply_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Drop Orbax's INFO records unless ``--orbax_info`` (`define_flags` must have run)."""
  logs.quiet_orbax(not flag_values[ORBAX_FLAG].value)


def _overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
  out = []
  for arg in argv[1:]:
    if arg == "--":
      break
    name = arg.split("=", 1)[0]
    if name.startswith("--") and "." in name:
      out.append((arg, name[2:].split(".", 1)[1]))
  return out


def flat_keys(cfg: Mapping[str, Any], prefix: str = "") -> list[str]:
  """``{"mesh": {"data": -1}}`` → ``["mesh.data"]`` (every leaf key of a config)."""
  out = []
  for k, v in cfg.items():
    out += flat_keys(v, f"{prefix}{k}.") if hasattr(v, "items") else [f"{prefix}{k}"]
  return out


def check_overrides(argv: Sequence[str], known: Iterable[str], flag: str = "config") -> None:
  """Exit naming the first ``--<flag>.<key>`` whose key is not in ``known``."""
  known = set(known)
  for arg, key in _overrides(argv):
    if arg.startswith(f"--{flag}.") and key not in known:
      raise SystemExit(f"FATAL: unknown config key {flag + '.' + key!r} (from {arg!r}); known keys: "
                       f"{', '.join(sorted(known))}")


def _missing_key(error: AttributeError, argv: Sequence[str]) -> SystemExit:
  """ml_collections' bare ``AttributeError`` for an override of a missing key, as a one-line exit."""
  missing = str(error).strip("\"' ")
  for arg, key in _overrides(argv):
    if missing in key.split("."):
      return SystemExit(f"FATAL: {arg}: config key {key!r} does not exist")
  return SystemExit(f"FATAL: a config override names a key that does not exist ({missing!r})")


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with an unknown override key reported by name."""
  try:
    return flags.FLAGS(list(argv))
  except AttributeError as e:
    raise _missing_key(e, argv) from None


def config_file(name: str, default: str | None, help_string: str, *,
                keys: Callable[[], Iterable[str]] | None = None):
  """``config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)``, its
  ``--<name>.<key>`` overrides checked against ``keys()`` first when given (ml_collections reads
  ``sys.argv`` as the flag is defined, so the check is made on it now)."""
  if keys is not None:
    check_overrides(sys.argv, keys(), flag=name)
  try:
    return config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
  except AttributeError as e:
    raise _missing_key(e, sys.argv) from None


def run(main: Callable[[list[str]], Any], *, cache: bool = True, orbax: bool = True,
        threefry: bool = False) -> None:
  """``absl.app.run(main)`` with the common flags, the override check and the process-wide settings.

  Args:
    main: the launcher's ``main(argv)``.
    cache: define ``--compilation_cache`` and turn the persistent cache on before ``main``.
    orbax: define ``--orbax_info`` and drop Orbax's INFO records (unless it is set) before ``main``.
    threefry: set ``jax_threefry_partitionable`` before ``main``.
  """
  define_flags(cache=cache, orbax=orbax)

  def process_main(argv: list[str]) -> Any:
    if cache:
      enable_from_flags()
    if orbax:
      apply_flags()
    if threefry:
      jax.config.update("jax_threefry_partitionable", True)
    return main(argv)

  absl_app.run(process_main, flags_parser=parse_flags)
