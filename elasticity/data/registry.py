"""Named datasets: ``register(name)`` a loader, ``load_dataset(name, ...)`` it, ``available()``.

A loader is a function ``(*, split, data_dir, source, on_error, **kw) -> Records``. ``data_dir`` is
the folder holding the source's files (default: ``shared_path("data", <name>)``); ``source`` is
``None``/``"local"`` (files in their own format), ``"hf"`` (a Hugging Face ``datasets`` name) or
``"tfds"`` (a TFDS name), the last two only on a machine that is online.

The built-in loaders (`elasticity.data.builtin`, `elasticity.data.imdb`) register themselves when
imported; the package (``elasticity/data/__init__.py``, which Python runs before any of its modules,
this one included) imports them, so every built-in name is registered whatever was imported first.
"""

from __future__ import annotations

from collections.abc import Callable

from elasticity.data.records import Records

Loader = Callable[..., Records]
_LOADERS: dict[str, Loader] = {}
SOURCES = (None, "local", "hf", "tfds")


def register(name: str) -> Callable[[Loader], Loader]:
  """Decorator: make ``fn`` loadable as ``load_dataset(name, ...)``."""
  def deco(fn: Loader) -> Loader:
    if name in _LOADERS and _LOADERS[name] is not fn:
      raise ValueError(f"dataset {name!r} is already registered by {_LOADERS[name].__module__}")
    _LOADERS[name] = fn
    return fn
  return deco


def available() -> list[str]:
  """Names that ``load_dataset`` accepts."""
  return sorted(_LOADERS)


def load_dataset(name: str, split: str | None = None, *, data_dir=None, source: str | None = None,
                 on_error: str = "raise", **kw) -> Records:
  """Records of the named dataset.

  Args:
    name: a registered name (``available()``), e.g. ``"alpaca"``, ``"imdb"``, ``"jsonl"``.
    split: the split, where the dataset has several (``"train"``/``"test"``).
    data_dir: folder with the source files; default ``shared_path("data", <name>)``.
    source: ``None``/``"local"``, ``"hf"`` or ``"tfds"``.
    on_error: ``"raise"`` (a ``DataError`` naming file, record and field) or ``"skip"`` (bad records
      are dropped; ``result.skipped`` holds their errors and a warning is logged).
    **kw: loader options (each built-in documents its own).
  """
  if name not in _LOADERS:
    raise KeyError(f"unknown dataset {name!r}; available: {', '.join(sorted(_LOADERS))}")
  if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
  return _LOADERS[name](split=split, data_dir=data_dir, source=source, on_error=on_error, **kw)
