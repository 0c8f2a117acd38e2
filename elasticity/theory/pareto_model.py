"""Leaf masses of a real token tree from a real model's probabilities, where the empirical tree is too
sparse (issue 10 §3: at depth ≥ 3 the empirical trees of Alpaca / IMDb are 89–99 % singletons).

Nodes. Each response is tokenized by the model's own tokenizer and cut to its first D = max(depths)
tokens; a response shorter than D gets the end token (EOS) appended, so its node is "ended". The
depth-d node of a response is the first d entries of that sequence (an ended response shorter than d
keeps its ended node). Over *all* token strings, the model's masses of the depth-d nodes sum to 1.

Masses. p_model(x_1..x_d) = Π_t p(x_t | start, x_<t), the log-probabilities from one batched forward
per batch of distinct sequences (`elasticity.logprobs.token_logprobs`, a fixed [batch, 1 + D] shape:
one compilation). ``start`` is the context the prefix is scored from: the tokenizer's BOS
(``"bos"``; SmolLM2's is ``<|im_start|>``) or a literal text (e.g. ``"<|im_start|>assistant\\n"``,
the instruct model's natural start of a reply). The dataset's distinct depth-d nodes get the masses
q_j = p_j / Σ_j p_j; ``coverage`` = Σ_j p_j is the model mass the dataset's nodes hold.

Fits. The q_j are continuous (not counts), so they get continuous maximum-likelihood fits above a
cut x_min: Pareto and exponential as in `elasticity.theory.pareto.fit_all` (closed forms; x_min the
cut), and a lognormal *truncated* at x_min (likelihood of x given x ≥ x_min, fitted numerically), so
all three models are densities on the same support [x_min, ∞). Cuts: ``all`` (x_min = min q) and
``tail`` (x_min chosen as in Clauset, Shalizi & Newman 2009: the cut that minimizes the Pareto fit's
KS distance, with at least ``tail_min_n`` masses above). Vuong's z compares the pointwise
log-densities. A lognormal truncated far into its tail (μ ≪ ln x_min, σ large) is itself a power law,
so on Pareto data it ties (|z| < 2) rather than loses: read its μ, σ next to the verdict. The empirical count fits of `elasticity.theory.pareto_real.depth_rows` are computed on
the same sequences (same tokenizer, same nodes) for comparison.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from scipy.special import log_ndtr
from scipy.stats import spearmanr

from elasticity import paths
from elasticity.logprobs import token_logprobs
from elasticity.convert import load_pretrained
from elasticity.theory.pareto import Fit, _ks, fit_all
from elasticity.theory.pareto_real import depth_rows, load_texts
from elasticity.theory.pareto_real import to_markdown as emp_md
from elasticity.theory.tree import TokenTree
from elasticity.tokenizers import load_tokenizer


# --------------------------------------------------------------------------------------------------
# Nodes and their model masses
# --------------------------------------------------------------------------------------------------


def node_sequences(texts: Sequence[str], tokenizer, depth: int, end_id: int,
                   prefix_chars: int = 400) -> list[list[int]]:
  """Each text's first ``depth`` tokens, with ``end_id`` appended when it has fewer."""
  if depth < 1:
    raise ValueError(f"node_sequences: depth must be >= 1, got {depth}")
  seqs = []
  for i, text in enumerate(texts):
    if not isinstance(text, str) or not text.strip():
      raise ValueError(f"node_sequences: text {i} is empty or not a string ({text!r:.40})")
    ids = list(tokenizer.encode(text[:prefix_chars]))
    if len(text) > prefix_chars and len(ids) < depth:
      raise ValueError(f"node_sequences: text {i}: {prefix_chars} characters give only {len(ids)} "
                       f"< {depth} tokens; raise prefix_chars")
    seqs.append(ids[:depth] if len(ids) >= depth else ids + [int(end_id)])
  return seqs


def start_ids(tokenizer, start: str) -> list[int]:
  """The context a prefix is scored from: ``"bos"`` → [BOS], any other text → its encoding."""
  if start == "bos":
    if tokenizer.bos_id is None:
      raise ValueError("config.start='bos': the tokenizer has no BOS token; give a start text")
    return [int(tokenizer.bos_id)]
  ids = list(tokenizer.encode(start))
  if not ids:
    raise ValueError(f"config.start={start!r} encodes to no tokens")
  return ids


def sequence_logprobs(model, seqs: Sequence[Sequence[int]], start: Sequence[int],
                      batch_size: int = 32, chunk_size: int = 128) -> np.ndarray:
  """log p(seq[t] | start, seq[<t]) for every sequence: float64 [N, L] (L = longest), NaN past the end.

  Rows are right-padded to one [batch_size, len(start) + L] shape (the last batch with dummy rows), so
  the jitted forward compiles once.
  """
  if not seqs:
    raise ValueError("sequence_logprobs: no sequences")
  s = len(start)
  lengths = np.array([len(x) for x in seqs])
  if lengths.min() < 1:
    raise ValueError(f"sequence_logprobs: sequence {int(np.argmin(lengths))} is empty")
  width = s + int(lengths.max())
  ids = np.zeros((len(seqs), width), np.int32)
  mask = np.zeros((len(seqs), width), bool)
  for i, x in enumerate(seqs):
    ids[i, :s], ids[i, s:s + len(x)] = start, x
    mask[i, :s + len(x)] = True
  graphdef, state = nnx.split(model)

  @jax.jit
  def score(state, ids, mask):
    lp, _ = token_logprobs(nnx.merge(graphdef, state), ids, attention_mask=mask,
                           chunk_size=chunk_size)
    return lp

  out = np.full((len(seqs), width - s), np.nan)
  for b0 in range(0, len(seqs), batch_size):
    rows = slice(b0, min(b0 + batch_size, len(seqs)))
    n = rows.stop - rows.start
    bi, bm = np.zeros((batch_size, width), np.int32), np.zeros((batch_size, width), bool)
    bi[:n], bm[:n] = ids[rows], mask[rows]
    bm[n:, 0] = True                                 # dummy rows: one real token, nothing scored
    lp = np.asarray(score(state, jnp.asarray(bi), jnp.asarray(bm)), np.float64)[:n, s:]
    out[rows] = np.where(mask[rows, s:], lp, np.nan)
  return out


def node_log_masses(seqs: Sequence[Sequence[int]], lp: np.ndarray, depth: int
                    ) -> tuple[list[tuple[int, ...]], np.ndarray, np.ndarray]:
  """The distinct depth-``depth`` nodes of ``seqs``, log p_model of each (Σ of its tokens' ``lp``),
  and how many sequences reach each (the empirical count)."""
  cum = np.cumsum(np.nan_to_num(lp, nan=0.0), axis=1)
  first: dict[tuple[int, ...], int] = {}
  counts: dict[tuple[int, ...], int] = {}
  for i, x in enumerate(seqs):
    node = tuple(int(t) for t in x[:depth])
    first.setdefault(node, i)
    counts[node] = counts.get(node, 0) + 1
  nodes = sorted(first)
  logm = np.array([cum[first[v], len(v) - 1] for v in nodes])
  return nodes, logm, np.array([counts[v] for v in nodes], np.int64)


def normalize(log_masses: np.ndarray) -> tuple[np.ndarray, float]:
  """(q = p / Σ p over the given nodes, log Σ p): the distribution and the log of the model mass
  those nodes cover."""
  lm = np.asarray(log_masses, np.float64)
  if lm.size == 0 or not np.isfinite(lm).all():
    raise ValueError("normalize: need finite log masses")
  top = lm.max()
  log_z = float(top + np.log(np.exp(lm - top).sum()))
  return np.exp(lm - log_z), log_z


# --------------------------------------------------------------------------------------------------
# Continuous fits of the masses
# --------------------------------------------------------------------------------------------------


def _lognormal_truncated(x: np.ndarray, x_min: float) -> tuple[float, float]:
  """MLE (μ, σ) of a lognormal truncated to [x_min, ∞)."""
  from scipy.optimize import minimize
  lx, lo = np.log(x), math.log(x_min)

  def nll(th):
    mu, sig = th[0], math.exp(th[1])
    z = (lx - mu) / sig
    return float(np.sum(0.5 * z * z + math.log(sig)) + x.size * log_ndtr(-(lo - mu) / sig))
  x0 = np.array([lx.mean(), math.log(max(lx.std(), 1e-3))])
  res = minimize(nll, x0, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-10,
                                                         "maxiter": 4000})
  return float(res.x[0]), float(math.exp(res.x[1]))


def pointwise_loglik(fit: Fit, x: np.ndarray) -> np.ndarray:
  """log f(x_i) of a `fit_masses` fit (densities on [x_min, ∞))."""
  x = np.asarray(x, np.float64)
  xm = fit.params["x_min"]
  if fit.model == "pareto":
    a = fit.params["alpha"]
    return math.log(a) + a * math.log(xm) - (a + 1) * np.log(x)
  if fit.model == "exponential":
    lam = fit.params["lambda"]
    return math.log(lam) - lam * (x - xm)
  mu, sig = fit.params["mu"], fit.params["sigma"]
  lx = np.log(x)
  return (-lx - math.log(sig) - 0.5 * math.log(2 * math.pi) - (lx - mu) ** 2 / (2 * sig ** 2)
          - log_ndtr(-(math.log(xm) - mu) / sig))


def fit_masses(x, x_min: float | None = None) -> list[Fit]:
  """Pareto, truncated lognormal and exponential MLE fits of the masses ``x`` >= ``x_min``
  (default min x); Pareto and exponential are `fit_all`'s closed forms."""
  x = np.asarray(x, np.float64).reshape(-1)
  x_min = float(x.min()) if x_min is None else float(x_min)
  fits = [f for f in fit_all(x, x_min) if f.model != "lognormal"]
  x = np.sort(x[x >= x_min])
  mu, sig = _lognormal_truncated(x, x_min)
  probe = Fit("lognormal", {"mu": mu, "sigma": sig, "x_min": x_min}, 0.0, 0.0, 0.0)
  ll = float(pointwise_loglik(probe, x).sum())
  lx, lo = np.log(x), math.log(x_min)
  cdf = -np.expm1(log_ndtr(-(lx - mu) / sig) - log_ndtr(-(lo - mu) / sig))   # 1 − SF(x) / SF(x_min)
  fits.insert(1, Fit("lognormal", probe.params, ll, 2 * 2 - 2 * ll, _ks(x, cdf)))
  for f in fits:
    f.params.setdefault("x_min", x_min)
  return fits


def vuong_masses(x, fit_a: Fit, fit_b: Fit) -> float:
  """Vuong's z of two `fit_masses` fits on the same masses (> 0 favours ``fit_a``)."""
  x = np.asarray(x, np.float64)
  x = x[x >= fit_a.params["x_min"]]
  d = pointwise_loglik(fit_a, x) - pointwise_loglik(fit_b, x)
  sd = float(d.std())
  return float(d.sum() / (math.sqrt(d.size) * sd)) if sd > 0 else 0.0


def clauset_x_min(x, min_n: int = 50) -> float:
  """The cut x_min minimizing the KS distance of the Pareto fit above it, over the observed values
  that leave at least ``min_n`` masses above (Clauset, Shalizi & Newman 2009)."""
  x = np.sort(np.asarray(x, np.float64).reshape(-1))
  if x.size < max(min_n, 3):
    raise ValueError(f"clauset_x_min: {x.size} masses, fewer than min_n = {min_n}")
  best, best_ks = float(x[0]), math.inf
  lx = np.log(x)
  for i in np.unique(np.searchsorted(x, np.unique(x[:x.size - min_n + 1]))):
    tail, lt = x[i:], lx[i:]
    s = float(np.sum(lt - lx[i]))
    if s <= 0:
      continue
    a = tail.size / s
    ks = _ks(tail, 1 - (x[i] / tail) ** a)
    if ks < best_ks:
      best, best_ks = float(x[i]), ks
  return best


def mass_fit_row(q: np.ndarray, cut: str, x_min: float) -> dict[str, Any] | None:
  x = q[q >= x_min]
  if x.size < 3 or np.unique(x).size < 2:
    return None
  fits = {f.model: f for f in fit_masses(x, x_min)}
  return {"x_min": float(x_min), "n": int(x.size), "cut": cut,
          "best_aic": min(fits.values(), key=lambda f: f.aic).model,
          "vuong_pareto_vs_lognormal": vuong_masses(x, fits["pareto"], fits["lognormal"]),
          "vuong_pareto_vs_exponential": vuong_masses(x, fits["pareto"], fits["exponential"]),
          **{m: {"loglik": f.loglik, "ks": f.ks, **f.params} for m, f in fits.items()}}


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def model_depth_rows(seqs, lp, depths, tail_min_n: int) -> list[dict[str, Any]]:
  rows = []
  for d in depths:
    nodes, logm, counts = node_log_masses(seqs, lp, d)
    q, log_z = normalize(logm)
    row = {"depth": int(d), "nodes": len(nodes), "singleton_share": float(np.mean(counts == 1)),
           "coverage": float(math.exp(log_z)), "q_max": float(q.max()), "q_min": float(q.min()),
           "spearman_vs_counts": (float(spearmanr(q, counts).statistic)
                                  if np.unique(counts).size > 1 else None)}
    row["all"] = mass_fit_row(q, "all", float(q.min()))
    row["tail"] = (mass_fit_row(q, "tail", clauset_x_min(q, tail_min_n))
                   if q.size >= max(tail_min_n, 3) else None)
    rows.append(row)
  return rows


def run_pareto_model(cfg) -> dict[str, Any]:
  """The ``pareto_model`` variant of configs/theory.py (see its keys there)."""
  t0 = time.perf_counter()
  depths = [int(x) for x in str(cfg.depths).split(",") if x.strip()]
  if not depths or min(depths) < 1:
    raise ValueError(f"config.depths: a comma list of positive depths, got {cfg.depths!r}")
  if cfg.dtype not in ("float32", "bfloat16"):
    raise ValueError(f"config.dtype: float32 or bfloat16, got {cfg.dtype!r}")
  model_path = cfg.model or str(paths.smollm2_gguf())
  tok = load_tokenizer(cfg.tokenizer or model_path)
  model = load_pretrained(model_path, dtype=getattr(jnp, cfg.dtype),
                          tokenizer=cfg.tokenizer or None)
  start = start_ids(tok, cfg.start)
  if tok.eos_id is None:
    raise ValueError(f"{cfg.tokenizer or model_path}: the tokenizer has no EOS to end short responses")
  t_load = time.perf_counter() - t0
  out = []
  for ds in [x.strip() for x in str(cfg.datasets).split(",") if x.strip()]:
    texts = load_texts(ds, cfg.limit)
    seqs = node_sequences(texts, tok, max(depths), tok.eos_id, cfg.prefix_chars)
    distinct = sorted({tuple(x) for x in seqs})
    t1 = time.perf_counter()
    lp_distinct = sequence_logprobs(model, [list(x) for x in distinct], start, cfg.batch_size)
    t_fwd = time.perf_counter() - t1
    where = {x: i for i, x in enumerate(distinct)}
    lp = lp_distinct[[where[tuple(x)] for x in seqs]]
    tree = TokenTree.from_sequences(seqs, vocab_size=max(tok.vocab_size, max(map(max, seqs)) + 1))
    logging.info("%s: %d texts, %d distinct %d-token sequences scored in %.1f s", ds, len(texts),
                 len(distinct), max(depths), t_fwd)
    out.append({"dataset": ds, "texts": len(texts), "distinct_sequences": len(distinct),
                "forward_seconds": t_fwd,
                "model_rows": model_depth_rows(seqs, lp, depths, cfg.tail_min_n),
                "empirical_rows": depth_rows(tree, depths, len(texts), cfg.tail_min_count)})
  return {"config": cfg.to_dict(), "model": model_path, "start_ids": start, "fits": out,
          "load_seconds": t_load, "seconds": time.perf_counter() - t0}


def to_markdown(res: dict[str, Any]) -> str:
  lines = [f"Model masses of the depth-d nodes under `{res['model'].split('/')[-1]}`, scored from "
           f"start ids {res['start_ids']} ({res['config']['start']!r}), normalized over the dataset's "
           "distinct nodes; continuous fits (lognormal truncated at x_min). coverage = the model mass "
           "of those nodes before normalization; ρ = Spearman correlation of the model masses with "
           "the empirical counts. ΔLL = Pareto's log-likelihood minus the other's; z = Vuong "
           "(> 2 favours Pareto, < −2 the other).", ""]
  for block in res["fits"]:
    lines += [f"#### {block['dataset']} ({block['texts']} texts, {block['distinct_sequences']} distinct "
              f"sequences, forward {block['forward_seconds']:.1f} s): model masses", "",
              "| depth | nodes | singletons | coverage | ρ | cut | x_min | n | Pareto α | "
              "ΔLL vs lognormal (z) | ΔLL vs exponential (z) | lognormal μ, σ | KS Pareto | "
              "KS lognormal | KS exponential | best (AIC) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in block["model_rows"]:
      rho = "" if r["spearman_vs_counts"] is None else f"{r['spearman_vs_counts']:.2f}"
      head = f"| {r['depth']} | {r['nodes']} | {r['singleton_share']:.2f} | {r['coverage']:.3g} | {rho} "
      for cut in ("all", "tail"):
        f = r[cut]
        if f is None:
          lines.append(head + f"| {cut} | too few | | | | | | | | | |")
          continue
        p, ln, ex = f["pareto"], f["lognormal"], f["exponential"]
        lines.append(
            head + f"| {cut} | {f['x_min']:.3g} | {f['n']} | {p['alpha']:.3f} | "
            f"{p['loglik'] - ln['loglik']:.1f} ({f['vuong_pareto_vs_lognormal']:.1f}) | "
            f"{p['loglik'] - ex['loglik']:.1f} ({f['vuong_pareto_vs_exponential']:.1f}) | "
            f"{ln['mu']:.3g}, {ln['sigma']:.3g} | {p['ks']:.3f} | {ln['ks']:.3f} | {ex['ks']:.3f} | "
            f"{f['best_aic']} |")
    lines += ["", f"#### {block['dataset']}: empirical counts of the same nodes (binned fits, "
              "`pareto_real.depth_rows`)", ""]
    emp = emp_md({"fits": [{"dataset": block["dataset"], "tokenizer": "model's", "texts": block["texts"],
                            "rows": block["empirical_rows"]}], "seconds": 0.0})
    lines += [x for x in emp.splitlines()[2:] if not x.startswith("####") and not x.startswith("computed")]
  lines.append(f"model loaded in {res['load_seconds']:.1f} s; computed in {res['seconds']:.1f} s")
  return "\n".join(lines) + "\n"
