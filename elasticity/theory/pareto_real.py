"""Section 3's "Pareto assumption on real data": pruned token trees of real responses (Alpaca
responses, IMDb reviews) under real tokenizers, and the fits of `elasticity.theory.pareto` to their
leaf masses at each depth.

A leaf mass at depth d is the empirical frequency of a d-token prefix of the responses (a response
shorter than d is its own leaf). Only the first ``max(depths)`` tokens of each text matter, so each
text is cut to ``prefix_chars`` characters before encoding (the first tokens of a text do not depend
on characters hundreds of positions later: every tokenizer here splits at word boundaries first; the
cut is checked to leave at least twice the needed characters). Fits use all nodes (x_min = the
smallest mass, 1/|D|) and the tail of nodes seen at least ``tail_min_count`` times.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from absl import logging

from elasticity import data, paths
from elasticity.theory.pareto import fit_counts, vuong_z
from elasticity.theory.tree import TokenTree
from elasticity.tokenizers import load_tokenizer

TOKENIZERS = {"llama2": ("tokenizers", "llama2", "tokenizer.model"), "gpt2": ("tokenizers", "gpt2"),
              "llama3": ("tokenizers", "llama3", "tokenizer_llama3.tiktoken"),
              "qwen": ("tokenizers", "qwen", "qwen.tiktoken")}
TEXTS = {"alpaca": ("alpaca", None, "response"), "imdb": ("imdb", "train", "text")}


def load_texts(name: str, limit: int = 0) -> list[str]:
  """The response texts of ``alpaca`` or the review texts of ``imdb`` (train split)."""
  if name not in TEXTS:
    raise ValueError(f"config.datasets: {name!r} is not one of {tuple(TEXTS)}")
  ds, split, field = TEXTS[name]
  records = data.load_dataset(ds, split, on_error="skip")
  texts = [r[field] for r in records]
  return texts[:limit] if limit else texts


def load_named_tokenizer(name: str):
  if name not in TOKENIZERS:
    raise ValueError(f"config.tokenizers: {name!r} is not one of {tuple(TOKENIZERS)}")
  kw = {"flavor": name} if name in ("llama3", "qwen") else {}
  return load_tokenizer(paths.shared_path(*TOKENIZERS[name]), **kw)


def prefix_tree(texts: list[str], tokenizer, depth: int, prefix_chars: int = 400) -> TokenTree:
  """The token tree of the texts' first ``depth`` tokens (empirical masses)."""
  seqs = []
  for i, text in enumerate(texts):
    ids = list(tokenizer.encode(text[:prefix_chars]))[:depth]
    if not ids:
      raise ValueError(f"prefix_tree: text {i} encodes to no tokens")
    if len(text) > prefix_chars and len(tokenizer.decode(ids)) * 2 > prefix_chars:
      raise ValueError(f"prefix_tree: text {i}: {depth} tokens span more than half of prefix_chars="
                       f"{prefix_chars}; raise it")
    seqs.append(ids)
  return TokenTree.from_sequences(seqs, vocab_size=tokenizer.vocab_size)


def depth_rows(tree: TokenTree, depths, n_texts: int, tail_min_count: int) -> list[dict[str, Any]]:
  """Fits of the node counts at each depth: all nodes (c_min = 1) and the tail (c_min = the cut)."""
  rows = []
  for d in depths:
    counts = np.rint(tree.prune(d).leaf_masses() * n_texts).astype(np.int64)
    row = {"depth": int(d), "nodes": int(counts.size), "singleton_share": float(np.mean(counts == 1)),
           "max_count": int(counts.max())}
    for cut, c_min in (("all", 1), (f"count>={tail_min_count}", tail_min_count)):
      x = counts[counts >= c_min]
      if x.size < 3 or np.unique(x).size < 2:
        row[cut] = None
        continue
      fits = {f.model: f for f in fit_counts(x, c_min)}
      best = min(fits.values(), key=lambda f: f.aic).model
      row[cut] = {"n": int(x.size), "best_aic": best,
                  "vuong_pareto_vs_lognormal": vuong_z(x, fits["pareto"], fits["lognormal"]),
                  "vuong_pareto_vs_exponential": vuong_z(x, fits["pareto"], fits["exponential"]),
                  **{m: {"loglik": f.loglik, "ks": f.ks, **f.params} for m, f in fits.items()}}
    rows.append(row)
  return rows


def run_pareto(cfg) -> dict[str, Any]:
  t0 = time.perf_counter()
  depths = [int(x) for x in str(cfg.depths).split(",") if x.strip()]
  if not depths or min(depths) < 1:
    raise ValueError(f"config.depths: a comma list of positive depths, got {cfg.depths!r}")
  out = []
  for ds in [x.strip() for x in str(cfg.datasets).split(",") if x.strip()]:
    texts = load_texts(ds, cfg.limit)
    for tk in [x.strip() for x in str(cfg.tokenizers).split(",") if x.strip()]:
      tok = load_named_tokenizer(tk)
      tree = prefix_tree(texts, tok, max(depths), cfg.prefix_chars)
      logging.info("%s / %s: %d texts, %d leaves at depth %d", ds, tk, len(texts), tree.n_leaves,
                   max(depths))
      out.append({"dataset": ds, "tokenizer": tk, "texts": len(texts),
                  "rows": depth_rows(tree, depths, len(texts), cfg.tail_min_count)})
  return {"config": cfg.to_dict(), "fits": out, "seconds": time.perf_counter() - t0}


def to_markdown(res: dict[str, Any]) -> str:
  lines = ["Counts of the depth-d nodes, binned Pareto / lognormal / exponential fits (ΔLL = Pareto's "
           "log-likelihood minus the other's; z = Vuong's statistic, > 2 favours Pareto, < −2 the "
           "other).", ""]
  for block in res["fits"]:
    lines += [f"#### {block['dataset']} ({block['texts']} texts), {block['tokenizer']} tokenizer", "",
              "| depth | nodes | singletons | max count | cut | n | Pareto α | ΔLL vs lognormal (z) | "
              "ΔLL vs exponential (z) | lognormal μ, σ | KS Pareto | KS lognormal | KS exponential | "
              "best (AIC) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in block["rows"]:
      head = f"| {r['depth']} | {r['nodes']} | {r['singleton_share']:.2f} | {r['max_count']} "
      for cut in [k for k in r if k == "all" or k.startswith("count>=")]:
        f = r[cut]
        if f is None:
          lines.append(head + f"| {cut} | too few | | | | | | | | |")
          continue
        p, ln, ex = f["pareto"], f["lognormal"], f["exponential"]
        lines.append(
            head + f"| {cut} | {f['n']} | {p['alpha']:.3f} | "
            f"{p['loglik'] - ln['loglik']:.1f} ({f['vuong_pareto_vs_lognormal']:.1f}) | "
            f"{p['loglik'] - ex['loglik']:.1f} ({f['vuong_pareto_vs_exponential']:.1f}) | "
            f"{ln['mu']:.3g}, {ln['sigma']:.3g} | {p['ks']:.3f} | {ln['ks']:.3f} | {ex['ks']:.3f} | {f['best_aic']} |")
    lines.append("")
  lines.append(f"computed in {res['seconds']:.1f} s")
  return "\n".join(lines) + "\n"
