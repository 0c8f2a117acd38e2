"""The house's one layering rule, read from the code's own imports (module-level and function-local).

    launch/                                        absl apps (launch/app.py owns env, flags, cache, logs)
    configs/                                       ml_collections config files
    elasticity/experiments/                        core/ (runner, cells, shards) + one package each
    elasticity/theory/ aot/
    elasticity/train/ eval/ compression/ report/
    elasticity/data/ models/ convert/ tokenizers/ logprobs
    elasticity/atomic paths sharding compile_cache logs            (base modules)

A module imports only from its own layer or the layers below it; no cycle closes between packages or
between files; a function-local import is for an optional heavy dependency (`OPTIONAL`) and never for
a module of this project, so every arrow a reader (or a tool) needs is at the top of the file. No
library file is longer than `MAX_LINES`.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("elasticity", "launch", "configs")

LAYERS = {
    "launch": 7,
    "configs": 6,
    "elasticity.experiments": 5,
    "elasticity.theory": 4,
    "elasticity.aot": 4,       # AOT compilation for TPU slices: builds train/, compression/, eval/ programs
    "elasticity.train": 3, "elasticity.eval": 3, "elasticity.compression": 3, "elasticity.report": 3,
    "elasticity.data": 2, "elasticity.models": 2, "elasticity.convert": 2, "elasticity.tokenizers": 2,
    "elasticity.logprobs": 2,   # the log-prob head reads the model's unembedding (models.layers)
    "elasticity": 1,        # the package's own base modules: atomic, paths, sharding, compile_cache, logs
}

# Heavy or optional third-party packages that may be imported inside a function, so that importing the
# library (or a launcher's --help) does not pay for them, or works without them installed.
OPTIONAL = frozenset({
    "torch", "matplotlib", "libtpu", "gguf", "transformers", "datasets", "tensorflow_datasets",
    "pyarrow", "tensorboardX", "tiktoken", "sentencepiece", "scipy",
    "jax.experimental.pallas",      # the TPU splash-attention kernel, imported only when chosen
})


def _optional(module: str) -> bool:
  return any(module == o or module.startswith(o + ".") for o in OPTIONAL)

MAX_LINES = 450
MAX_LINES_OF = {"elasticity/train/loop.py": 300}


def _module_name(path: Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
  out = {}
  for top in PROJECT:
    for path in sorted((ROOT / top).rglob("*.py")):
      out[_module_name(path)] = path
  return out


SOURCES = _sources()
Import = collections.namedtuple("Import", "source target line local")


def _imports(name: str, path: Path) -> list[Import]:
  """Every import in a file: (importer, imported module, line, inside a function or class?)."""
  tree = ast.parse(path.read_text(), filename=str(path))
  top = {id(node) for node in tree.body}
  # An import under `if TYPE_CHECKING:` or `try:` at module level is still module level.
  for node in tree.body:
    if isinstance(node, (ast.If, ast.Try)):
      top |= {id(n) for n in ast.walk(node)}
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        pkg = pkg[:len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in SOURCES else base for a in node.names]
    else:
      continue
    out += [Import(name, t, node.lineno, id(node) not in top) for t in targets]
  return out


IMPORTS = [imp for name, path in SOURCES.items() for imp in _imports(name, path)]


def _unit(module: str) -> str:
  """The layer unit a module belongs to: its package in `LAYERS`, or a base module of its own."""
  for prefix in sorted(LAYERS, key=len, reverse=True):
    if prefix != "elasticity" and (module == prefix or module.startswith(prefix + ".")):
      return prefix
  return module


def _layer(module: str) -> int:
  unit = _unit(module)
  return LAYERS.get(unit, LAYERS["elasticity"]) if unit.startswith("elasticity") else LAYERS[unit]


def _project(module: str) -> bool:
  return module.split(".")[0] in PROJECT


def _where(imp: Import) -> str:
  return f"{SOURCES[imp.source].relative_to(ROOT)}:{imp.line} imports {imp.target}"


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one node (Tarjan, iterative)."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
  for root in sorted(edges):
    if root in index:
      continue
    work = [(root, iter(sorted(edges[root])))]
    index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)
    while work:
      v, it = work[-1]
      for w in it:
        if w not in index:
          index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
          work.append((w, iter(sorted(edges.get(w, ())))))
          break
        if w in on:
          low[v] = min(low[v], index[w])
      else:
        work.pop()
        if work:
          low[work[-1][0]] = min(low[work[-1][0]], low[v])
        if low[v] == index[v]:
          comp = []
          while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
              break
          if len(comp) > 1:
            out.append(sorted(comp))
  return out


def test_the_scanner_sees_the_project():
  assert {"elasticity", "launch", "configs"} <= set(SOURCES)
  assert any(imp.target.startswith("elasticity.") for imp in IMPORTS)
  assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
  assert _layer("elasticity.atomic") < _layer("elasticity.data.records") < _layer("elasticity.train")


def test_no_import_points_up_the_rule():
  bad = [f"{_where(i)} (layer {_layer(i.source)} -> {_layer(i.target)})" for i in IMPORTS
         if _project(i.target) and _layer(i.target) > _layer(i.source)]
  assert not bad, "imports against the layering rule:\n" + "\n".join(bad)


def test_no_function_local_import_of_the_project():
  bad = [_where(i) for i in IMPORTS if i.local and _project(i.target)]
  assert not bad, "function-local imports of the project's own modules:\n" + "\n".join(bad)


def test_function_local_imports_are_for_optional_dependencies():
  bad = [_where(i) for i in IMPORTS
         if i.local and not _project(i.target) and not _optional(i.target)]
  assert not bad, ("function-local imports of a dependency that is neither heavy nor optional "
                   f"(allowed: {sorted(OPTIONAL)}):\n" + "\n".join(bad))


@pytest.mark.parametrize("level", ["package", "file"])
def test_no_cycles(level):
  key = _unit if level == "package" else (lambda m: m)
  edges: dict[str, set[str]] = collections.defaultdict(set)
  for i in IMPORTS:
    if _project(i.target) and i.target in SOURCES:
      a, b = key(i.source), key(i.target)
      if a != b:
        edges[a].add(b)
  cycles = _cycles(dict(edges))
  assert not cycles, f"{level}-level import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_import_by_string():
  bad = []
  for name, path in SOURCES.items():
    for node in ast.walk(ast.parse(path.read_text())):
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == "import_module"):
        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
      if isinstance(node, ast.FunctionDef) and node.name == "__getattr__" and node.col_offset == 0:
        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} (a module-level __getattr__)")
  assert not bad, "modules found by string or lazy attribute (import them by name):\n" + "\n".join(bad)


def test_library_files_are_small():
  long = []
  for path in sorted((ROOT / "elasticity").rglob("*.py")):
    rel = str(path.relative_to(ROOT))
    n = len(path.read_text().splitlines())
    if n > MAX_LINES_OF.get(rel, MAX_LINES):
      long.append(f"{rel}: {n} lines (at most {MAX_LINES_OF.get(rel, MAX_LINES)})")
  assert not long, "\n".join(long)
