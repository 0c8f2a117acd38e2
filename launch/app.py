"""The launchers' one entry point: ``app.run(main, ...)`` owns what is process-wide.

* **Environment defaults** (`ENV_DEFAULTS`: Hugging Face offline, transformers quiet; and
  ``JAX_PLATFORMS=cpu`` on a machine with libtpu installed but no TPU or GPU), set when this
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

**Exit codes**, the same for every launcher (schedulers requeue on 3): `EXIT_DONE` 0, `EXIT_ERROR` 1
(a user mistake: one ``FATAL: …`` line on stderr naming the file, record, field or config key, and no
traceback — `USER_ERRORS`; a programming error still shows its traceback), `EXIT_PREEMPTED` 3 (SIGTERM
or SIGINT: a checkpoint was saved; run the same command again to continue).
"""

from __future__ import annotations

import difflib
import glob
import importlib.util
import os
import sys
import traceback

ENV_DEFAULTS = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
for _name, _value in ENV_DEFAULTS.items():
  os.environ.setdefault(_name, _value)


def _libtpu_without_tpu() -> bool:
  """libtpu is installed (the ``aot`` or ``test`` extra) but this machine has no TPU and no GPU: JAX
  would try to start a TPU backend on every start and log errors (TPU VMs expose /dev/accel* or
  /dev/vfio/<n>; NVIDIA GPUs /dev/nvidia<n>)."""
  if importlib.util.find_spec("libtpu") is None:
    return False
  return not (glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or glob.glob("/dev/nvidia[0-9]*"))


# A CPU machine with libtpu (installed for `launch.aot`, which compiles for TPUs without starting a
# TPU backend): the CPU platform only, unless the user chose the platforms.
if "JAX_PLATFORMS" not in os.environ and _libtpu_without_tpu():
  os.environ["JAX_PLATFORMS"] = "cpu"

# pylint: disable=wrong-import-position
from collections.abc import Callable, Iterable, Mapping, Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
from absl import app as absl_app  # noqa: E402
from absl import flags  # noqa: E402
from absl.app import UsageError  # noqa: E402,F401  (launchers raise app.UsageError)
from ml_collections import config_flags  # noqa: E402

from absl import logging  # noqa: E402

from elasticity import atomic, compile_cache, logs  # noqa: E402
from elasticity.data.errors import DataError  # noqa: E402
from elasticity.eval.scorer_config import ScorerConfigError  # noqa: E402
from elasticity.report.results import ResultsError  # noqa: E402
from elasticity.train.checkpoint import CheckpointIntegrityError  # noqa: E402

EXIT_DONE, EXIT_ERROR, EXIT_PREEMPTED = 0, 1, 3

# Errors that mean the user's input is wrong (a file, a record, a folder, a key): one line, no traceback.
USER_ERRORS = (DataError, ResultsError, ScorerConfigError, CheckpointIntegrityError,
               atomic.ExistingFolderError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError)

_CONFIG_FLAGS: dict[str, str | None] = {}     # name -> default of every flag `config_file` defined

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


def _config_keys(argv: Sequence[str], name: str) -> list[str]:
  """Every leaf key of the config ``--<name>=…`` in ``argv`` names (loaded without the overrides), or
  [] when it cannot be loaded."""
  spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith(f"--{name}=")),
              _CONFIG_FLAGS.get(name))
  if not spec:
    return []
  fv, saved = flags.FlagValues(), sys.argv
  sys.argv = [argv[0], f"--{name}={spec}"]    # ml_collections reads its overrides from sys.argv
  try:
    holder = config_flags.DEFINE_config_file(name, None, "", flag_values=fv)
    fv(sys.argv)
    return flat_keys(holder.value)
  except Exception:  # noqa: BLE001 — the config itself fails; that error is reported on its own
    return []
  finally:
    sys.argv = saved


def _nearest(key: str, known: Sequence[str]) -> str:
  close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
  if close:
    return f"; did you mean {close[0]!r}?"
  sections = sorted({k.split(".")[0] for k in known})
  return f"; the config's top-level keys: {', '.join(sections)}" if sections else ""


def _missing_key(error: Exception, argv: Sequence[str]) -> SystemExit:
  """ml_collections' bare ``KeyError``/``AttributeError`` for an override of a missing key, as a
  one-line exit naming the key and the nearest valid one."""
  while error.args and isinstance(error.args[0], Exception):   # AttributeError(KeyError(...))
    error = error.args[0]
  missing = str(error.args[0] if error.args else error).split("\n")[0].strip("\"'\\ ")
  for arg, key in _overrides(argv):
    if missing in key.split("."):
      name = arg[2:].split(".", 1)[0]
      return SystemExit(f"FATAL: {arg}: config key {key!r} does not exist"
                        f"{_nearest(key, _config_keys(argv, name))}")
  return SystemExit(f"FATAL: a config override names a key that does not exist ({missing!r})")


def _bad_value(error: flags.IllegalFlagValueError) -> SystemExit:
  """A flag value absl or ml_collections refused (a config override of the wrong type, a config file
  whose ``get_config`` raised), as one line: the flag, its value, and what was wrong."""
  text = str(error)
  head = text.split("\n")[0]
  if "Error whilst parsing config file" in text:
    last = [ln for ln in text.strip().splitlines() if ln.strip()][-1].strip()
    what = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].isidentifier() else last
    return SystemExit(f"FATAL: {head.removeprefix('flag ').split(': Error whilst')[0]}: {what}")
  return SystemExit(f"FATAL: {head.removeprefix('flag ')}")


def _config_load_error(error: OSError) -> str:
  """ml_collections' multi-line "Failed loading config file" as one line: the path and the reason."""
  lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
  paths = [ln for ln in lines if ln.endswith(".py") and not ln.startswith("Attempted")]
  return f"{paths[0] if paths else 'config file'}: {lines[-1]}"


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with a user's mistake (an unknown key, a value of the wrong type, a config
  variant its file refuses) reported in one line that names it."""
  try:
    return flags.FLAGS(list(argv))
  except (AttributeError, KeyError) as e:
    raise _missing_key(e, argv) from None
  except flags.IllegalFlagValueError as e:
    raise _bad_value(e) from None


def config_file(name: str, default: str | None, help_string: str, *,
                keys: Callable[[], Iterable[str]] | None = None):
  """``config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)``, its
  ``--<name>.<key>`` overrides checked against ``keys()`` first when given (ml_collections reads
  ``sys.argv`` as the flag is defined, so the check is made on it now)."""
  _CONFIG_FLAGS[name] = default
  if keys is not None:
    check_overrides(sys.argv, keys(), flag=name)
  try:
    return config_flags.DEFINE_config_file(name, default, help_string, lock_config=True)
  except (AttributeError, KeyError) as e:
    raise _missing_key(e, sys.argv) from None
  except flags.IllegalFlagValueError as e:
    raise _bad_value(e) from None


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
    try:
      return main(argv)
    except UsageError as e:     # absl would print the whole usage text above it
      print(f"FATAL: {e}", file=sys.stderr, flush=True)
      sys.exit(EXIT_ERROR)
    except USER_ERRORS as e:
      logging.debug("%s", traceback.format_exc())
      print(f"FATAL: {e}", file=sys.stderr, flush=True)
      sys.exit(EXIT_ERROR)
    except OSError as e:
      if "Failed loading config file" not in str(e):    # ml_collections' deferred load error
        raise
      print(f"FATAL: {_config_load_error(e)}", file=sys.stderr, flush=True)
      sys.exit(EXIT_ERROR)

  absl_app.run(process_main, flags_parser=parse_flags)
