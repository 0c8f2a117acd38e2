"""The exact theory lab as one function of a config: Theorem 4.2's table over k and l for each
scenario (capacity × where D_t lies), the normalization check, and Theorem 3.4 on the world's trees.

`run_exact(cfg)` returns plain dicts and lists (JSON-ready); `to_markdown(results)` renders them. The
config is `configs/theory.py:exact`; the entry point `launch/theory.py`.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from elasticity.theory.huffman import expected_code_length
from elasticity.theory.law import law_table, rates_and_slopes
from elasticity.theory.mixture import mixture_rates
from elasticity.theory.rates import NORMALIZATIONS
from elasticity.theory.tree import TokenTree
from elasticity.theory.worlds import NAMES, WorldConfig, make_world


def floats(text, key: str) -> list[float]:
  """A comma list of numbers from a config string; errors name ``config.<key>``."""
  try:
    vals = [float(x) for x in str(text).split(",") if x.strip()]
  except ValueError as e:
    raise ValueError(f"config.{key}: {text!r} is not a comma list of numbers") from e
  if not vals:
    raise ValueError(f"config.{key}: empty")
  return vals


def world_config(cfg) -> WorldConfig:
  fields = {f.name for f in dataclasses.fields(WorldConfig)}
  unknown = set(cfg.world.keys()) - fields
  if unknown:
    raise ValueError(f"config.world: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
  return WorldConfig(**dict(cfg.world)).validate()


def _masses(world, depth: int):
  trees = [world.tree(n) for n in NAMES]
  if depth:
    trees = [t.prune(depth) for t in trees]
  _, masses, lengths = TokenTree.union(trees)
  return masses, lengths


def run_exact(cfg) -> dict[str, Any]:
  """Every table of the exact lab for ``cfg`` (configs/theory.py)."""
  t0 = time.perf_counter()
  ks, ls = floats(cfg.ks, "ks"), floats(cfg.ls, "ls")
  if cfg.normalization not in NORMALIZATIONS:
    raise ValueError(f"config.normalization: {cfg.normalization!r} is not one of {NORMALIZATIONS}")
  base = world_config(cfg)
  if not 0 <= cfg.depth <= base.length:
    raise ValueError(f"config.depth: must be in [0, {base.length}] (0 = whole sequences), got {cfg.depth}")
  law, worlds = [], {}
  for name, sc in cfg.scenarios.items():
    if set(sc.keys()) != {"budget", "t_mode"} or int(sc.budget) < 0:
      raise ValueError(f"config.scenarios.{name}: needs exactly budget (>= 0 leaves; 0 = unbounded) "
                       f"and t_mode; got {dict(sc)}")
    budget = int(sc.budget) or None
    world = make_world(base, t_mode=sc.t_mode)
    masses, lengths = _masses(world, cfg.depth)
    worlds[name] = (world, masses, lengths, budget)
    law += [r.to_dict() for r in law_table(name, masses, lengths, world.vocab_size, ks, ls,
                                           budget=budget, normalization=cfg.normalization)]
  # Normalization check: γ under each M, and the slopes' differences between them (l > 0).
  norm_rows = []
  for name, (world, masses, lengths, budget) in worlds.items():
    for k in ks:
      per = {}
      for norm in NORMALIZATIONS:
        g = [mixture_rates(masses, [k, 1.0, l], lengths, world.vocab_size, budget=budget,
                           normalization=norm).normalized[:2] for l in ls]
        per[norm] = np.array(g)
      pos = [i for i, l in enumerate(ls) if l > 0]
      row = {"scenario": name, "k": k}
      for norm in NORMALIZATIONS[1:]:
        diff = per[norm] - per[NORMALIZATIONS[0]]          # [len(ls), 2]
        row[f"{norm}-own at l=0 (p, a)"] = [float(x) for x in diff[0]] if ls[0] == 0 else None
        row[f"{norm}-own over l>0 (p, a): spread"] = (
            [float(x) for x in diff[pos].max(0) - diff[pos].min(0)] if pos else None)
        row[f"{norm}-own at l>0 (p, a)"] = [float(x) for x in diff[pos[0]]] if pos else None
      norm_rows.append(row)
  # Theorem 3.4 on D_p's and D_a's exact trees.
  world0 = next(iter(worlds.values()))[0]
  code_rows = []
  for name in ("p", "a"):
    tree = world0.tree(name)
    for d in range(1, world0.length + 1):
      c = expected_code_length(tree, d, world0.length)
      code_rows.append({"dataset": name, **c.to_dict()})
  summary = {n: {"leaves": int(len(world0.probs[n])), "entropy_bits": world0.entropy_bits(n)}
             for n in NAMES}
  dev = [abs(r[f"dgamma_{i}_fd"] / r[f"dgamma_{i}"] - 1) for r in law if r["kept_stable"]
         for i in ("p", "a") if r[f"dgamma_{i}"] != 0]
  return {"config": cfg.to_dict(), "world": dataclasses.asdict(base), "world_summary": summary,
          "law": law, "fd_max_rel_dev": max(dev) if dev else None, "normalization_check": norm_rows, "theorem_3_4": code_rows,
          "seconds": time.perf_counter() - t0}


def _fmt(x, spec: str = ".4g") -> str:
  if isinstance(x, bool):
    return "yes" if x else "no"
  if isinstance(x, float):
    return format(x, spec)
  return str(x)


def to_markdown(res: dict[str, Any]) -> str:
  """The tables of ``run_exact`` as markdown."""
  cfg = res["config"]
  out = [f"normalization: {cfg['normalization']}; depth: {cfg['depth'] or 'whole sequences'}; "
         f"world: {res['world']}", ""]
  out += ["| dataset | leaves | entropy (bits/sequence) |", "|---|---|---|"]
  out += [f"| {n} | {v['leaves']} | {v['entropy_bits']:.4f} |" for n, v in res["world_summary"].items()]
  out += ["", "### Theorem 4.2 (rates in bits/token; slopes per unit l)", ""]
  cols = ["scenario", "k", "l", "gamma_p", "gamma_a", "dgamma_p", "dgamma_p_fd", "dgamma_a",
          "dgamma_a_fd", "signs_hold", "ratio", "theta", "envelope", "theta_closed", "escaped_p",
          "escaped_a", "escaped_t", "kept_stable"]
  out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in res["law"]:
    out.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
  out += ["", f"finite differences vs analytic slopes (rows with a stable kept set): max relative "
          f"deviation {_fmt(res['fd_max_rel_dev'], '.2e')}"]
  out += ["", "### Normalization check (differences of γ^{D_i/D} between choices of M, bits/token)", ""]
  for r in res["normalization_check"]:
    out.append("- " + "; ".join(f"{k}: {_fmt_list(v)}" for k, v in r.items()))
  out += ["", "### Theorem 3.4 (bits for a sequence of T tokens)", ""]
  cols = ["dataset", "depth", "blocks", "paper_ideal", "huffman", "entropy", "layer_entropy_sum"]
  out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in res["theorem_3_4"]:
    out.append("| " + " | ".join(_fmt(r[c]) for c in cols) + " |")
  out += ["", f"computed in {res['seconds']:.2f} s"]
  return "\n".join(out) + "\n"


def _fmt_list(v) -> str:
  if isinstance(v, list):
    return "(" + ", ".join(f"{x:.3g}" for x in v) + ")"
  return _fmt(v)
