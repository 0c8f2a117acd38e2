"""``--config.<key>=value`` overrides that name no key: a one-line error naming the key, never a traceback.

ml_collections raises a bare ``AttributeError: "'nokey'"`` (from inside flag parsing) for an override of
a key the locked config lacks. Launchers parse their flags through `parse` (``app.run(main,
flags_parser=overrides.parse)``), which turns that into ``FATAL: --config.eval.nokey=3: config key
'eval.nokey' does not exist``; `check` does the same up front against a known key set, for launchers
whose default config is loaded while the flag is defined.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from absl import flags


def _overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
  out = []
  for arg in argv[1:]:
    if arg == "--":
      break
    name = arg.split("=", 1)[0]
    if name.startswith("--") and "." in name:
      out.append((arg, name[2:].split(".", 1)[1]))
  return out


def check(argv: Sequence[str], known: Iterable[str], flag: str = "config") -> None:
  """Exit naming the first ``--<flag>.<key>`` whose key is not in ``known``."""
  known = set(known)
  for arg, key in _overrides(argv):
    if arg.startswith(f"--{flag}.") and key not in known:
      raise SystemExit(f"FATAL: unknown config key {flag + '.' + key!r} (from {arg!r}); known keys: "
                       f"{', '.join(sorted(known))}")


def parse(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with an unknown override key reported by name."""
  try:
    return flags.FLAGS(list(argv))
  except AttributeError as e:
    missing = str(e).strip("\"' ")
    for arg, key in _overrides(argv):
      if missing in key.split("."):
        raise SystemExit(f"FATAL: {arg}: config key {key!r} does not exist") from None
    raise SystemExit(f"FATAL: a config override names a key that does not exist ({missing!r})") from None
