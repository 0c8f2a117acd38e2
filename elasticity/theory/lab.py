"""The theory lab on trained networks: Theorem 4.2 measured on small Llamas trained from scratch in a
synthetic world, next to the exact theory of the same world, and the experiments of "Experiments,
part 1" (resistance, rebound, scaling, several rounds) inside the world. docs/theory.md §8.

`run_lab(cfg, workdir)` runs the parts named in ``cfg.parts`` (configs/theory.py:lab) and writes one
row per measurement to ``workdir/results.jsonl`` in the results schema of
`elasticity.report.results` (experiment ``theory_lab``; ``coords.part`` says which part), then the
report (`elasticity.theory.lab_report`). Every number is a function of the config and its seeds.

Parts (θ0 = a model pre-trained on D_p ∪ D_a with sizes (k, 1, 0), one per k and seed):

- ``law``: protocol ``joint`` continues θ0 on (k, 1, l) for each l (the same rows for every l, l = 0
  the control), protocol ``finetune`` trains θ0 on D_t alone, measured every few steps. γ of every
  dataset after each; the slopes dγ_i/dl by least squares over l, their ratio against −k and against
  the exact ratio of the same world (the unbounded joint code, `elasticity.theory.mixture`).
- ``resistance``: θ0 aligned on D_a, checkpoints θ1 < θ2 < θ3; D_j = samples of θ_j (the world's
  "responses of θ_j"); forward = θ_i trained on D_j (i < j), inverse = θ_j trained on D_i; the final
  training loss (bits/token on the target set) and its excess over the target model's own rate.
- ``rebound``: θ0 aligned on D_a for n⁺ steps, then perturbed with D_t (near D_p) for n⁻ steps;
  the score is the exact share of the model's distribution on D_a's support.
- ``scaling``: the rebound for several widths × depths and pre-training lengths.
- ``rounds``: align / perturb repeated; share and γ after each phase.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging
from tqdm import tqdm

from elasticity import atomic
from elasticity.theory import exact
from elasticity.theory.lab_report import EXPERIMENT, write_report
from elasticity.theory.mixture import mixture_rates
from elasticity.theory.network import NetConfig, Network, param_count
from elasticity.theory.worlds import NAMES, WorldConfig, make_world

PARTS = ("law", "resistance", "rebound", "scaling", "rounds")


# --- config ------------------------------------------------------------------------------------


floats = exact.floats


def ints(text, key: str) -> list[int]:
  vals = floats(text, key)
  if any(v != int(v) or v < 0 for v in vals):
    raise ValueError(f"config.{key}: {text!r} must be a comma list of integers >= 0")
  return [int(v) for v in vals]


def _dataclass(cls, section, key: str):
  fields = {f.name for f in dataclasses.fields(cls)}
  unknown = set(section.keys()) - fields
  if unknown:
    raise ValueError(f"config.{key}: unknown keys {sorted(unknown)}; known: {sorted(fields)}")
  return cls(**dict(section)).validate()


def models(text: str, key: str) -> list[tuple[int, int]]:
  """"64x2,128x2" → [(hidden, layers), ...]."""
  out = []
  for part in str(text).split(","):
    try:
      h, d = part.strip().lower().split("x")
      out.append((int(h), int(d)))
    except ValueError as e:
      raise ValueError(f"config.{key}: {part!r} is not HIDDENxLAYERS (e.g. 64x2)") from e
  return out


def config_hash(section) -> str:
  return hashlib.sha256(json.dumps(section, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --- the lab -----------------------------------------------------------------------------------


class Lab:
  """Shared state of one run: the world, networks per architecture, pre-trained models, rows."""

  def __init__(self, cfg, progress: Callable[[int], None] | None = None):
    self.cfg = cfg
    self.world_cfg = _dataclass(WorldConfig, cfg.world, "world")
    self.net_cfg = _dataclass(NetConfig, cfg.net, "net")
    self.world = make_world(self.world_cfg)
    self.seeds = ints(cfg.seeds, "seeds")
    self.parts = [p.strip() for p in str(cfg.parts).split(",") if p.strip()]
    bad = [p for p in self.parts if p not in PARTS]
    if bad:
      raise ValueError(f"config.parts: unknown {bad}; parts: {PARTS}")
    self.progress = progress or (lambda n: None)
    self._nets: dict[tuple[int, int], Network] = {}
    self._pre: dict[tuple, dict] = {}
    self.rows: list[dict] = []
    self.hash = config_hash(cfg.to_dict())

  def net(self, hidden: int | None = None, layers: int | None = None) -> Network:
    key = (hidden or self.net_cfg.hidden, layers or self.net_cfg.layers)
    if key not in self._nets:
      ncfg = dataclasses.replace(self.net_cfg, hidden=key[0], layers=key[1]).validate()
      self._nets[key] = Network(self.world, ncfg, seed=0)
    return self._nets[key]

  def pretrained(self, k: float, seed: int, net: Network | None = None, steps: int | None = None):
    """θ0 for (k, seed): random init (seed), then ``law.pretrain_steps`` on (k, 1, 0)."""
    net = net or self.net()
    steps = self.cfg.law.pretrain_steps if steps is None else steps
    key = (k, seed, net.net.hidden, net.net.layers, steps)
    if key not in self._pre:
      params = net.init_params(seed)
      self._pre[key] = net.train(params, (k, 1.0, 0.0), steps, self.cfg.law.pretrain_lr,
                                 seed=1000 + seed, progress=self.progress)
    return self._pre[key]

  def add(self, part: str, cell: str, point: str, seed: int | None, coords: dict, metrics: dict,
          parent: str | None = None) -> None:
    self.rows.append({"experiment": EXPERIMENT, "cell": cell, "parent": parent,
                      "config_hash": self.hash, "seed": seed, "point": point,
                      "coords": {"part": part, **coords},
                      "metrics": {k: _num(v) for k, v in metrics.items()}})

  # --- exact theory of the world ---------------------------------------------------------------

  def exact_gamma(self, k: float, l: float, budget: int | None = None) -> np.ndarray:
    """γ^{D_i/D} (p, a, t) of the exact joint code at sizes (k, 1, l), normalized as the network."""
    _, masses = self.world.union_masses()
    lengths = np.full(masses.shape[1], self.world.length)
    r = mixture_rates(masses, [k, 1.0, l], lengths, self.world.vocab_size, budget=budget,
                      normalization=self.net_cfg.normalization)
    return r.normalized

  # --- parts -----------------------------------------------------------------------------------

  def run_law(self) -> None:
    law = self.cfg.law
    ks, ls = floats(law.ks, "law.ks"), sorted(floats(law.ls, "law.ls"))
    if ls[0] != 0 or len(ls) < 2:
      raise ValueError(f"config.law.ls: must start with 0 (the control) and have a positive l; got {ls}")
    grid = sorted(set(ls) | set(floats(law.exact_ls, "law.exact_ls")))
    for k in ks:
      ex = {l: self.exact_gamma(k, l) for l in grid}
      exact_row = self.world.exact_law(k, 0.0, normalization=self.net_cfg.normalization)
      for l in grid:
        self.add("law", f"exact/k={k:g}", f"l={l:g}", None, {"protocol": "exact", "k": k, "l": l},
                 {"gamma_p": ex[l][0], "gamma_a": ex[l][1], "gamma_t": ex[l][2]})
      for seed in self.seeds:
        net = self.net()
        theta0 = self.pretrained(k, seed)
        r0 = net.rates(theta0)
        base = f"law/k={k:g}/seed={seed}"
        self.add("law", base, "pretrained", seed, {"protocol": "pretrained", "k": k},
                 _rate_metrics(r0))
        g = {}
        for l in ls:     # the same rows (data seed) for every l: only D_t's weight differs
          params = net.train(theta0, (k, 1.0, l), law.steps, law.lr, seed=2000 + seed,
                             progress=self.progress)
          r = net.rates(params)
          g[l] = r["gamma"]
          self.add("law", f"{base}/joint", f"l={l:g}", seed, {"protocol": "joint", "k": k, "l": l},
                   {**_rate_metrics(r), "exact_gamma_p": ex[l][0], "exact_gamma_a": ex[l][1]})
        sp = _slope(ls, [g[l]["p"] for l in ls])
        sa = _slope(ls, [g[l]["a"] for l in ls])
        esp = _slope(ls, [ex[l][0] for l in ls])
        esa = _slope(ls, [ex[l][1] for l in ls])
        # Fine-tuning on D_t alone, measured every `finetune_every` steps.
        traj = [(0, r0)]
        net.train(theta0, (0.0, 0.0, 1.0), law.finetune_steps, law.lr, seed=3000 + seed,
                  every=law.finetune_every, progress=self.progress,
                  callback=lambda s, p: traj.append((s, net.rates(p))))
        for s, r in traj:
          self.add("law", f"{base}/finetune", f"step={s}", seed,
                   {"protocol": "finetune", "k": k, "step": s,
                    "examples": s * net.net.rows_t}, _rate_metrics(r))
        dp = np.array([r["gamma"]["p"] - r0["gamma"]["p"] for _, r in traj[1:]])
        da = np.array([r["gamma"]["a"] - r0["gamma"]["a"] for _, r in traj[1:]])
        ft_ratio = float(da @ dp / (dp @ dp)) if (dp @ dp) > 0 else math.nan
        first = float(da[0] / dp[0]) if dp[0] != 0 else math.nan
        self.add("law", f"{base}/summary", "summary", seed, {"protocol": "summary", "k": k},
                 {"slope_p": sp, "slope_a": sa, "ratio": sa / sp if sp else math.nan,
                  "theta": (sa / sp) / -k if sp else math.nan, "signs_hold": float(sp < 0 < sa),
                  "exact_slope_p": esp, "exact_slope_a": esa, "exact_ratio": esa / esp,
                  "exact_ratio_l0": exact_row.ratio, "exact_envelope_l0": exact_row.envelope,
                  "finetune_ratio": ft_ratio, "finetune_ratio_first": first,
                  "finetune_theta": ft_ratio / -k,
                  "pretrained_gap_p": r0["bits_per_token"]["p"] - _bpt(ex[0][0], net, "p"),
                  "pretrained_gap_a": r0["bits_per_token"]["a"] - _bpt(ex[0][1], net, "a")})
        logging.info("law k=%g seed=%d: joint ratio %.4g (exact %.4g, −k = %g), finetune ratio %.4g",
                     k, seed, sa / sp if sp else math.nan, esa / esp, -k, ft_ratio)

  def _align_perturb(self, net: Network, theta: dict, n_pos: int, n_neg: list[int], seed: int,
                     record: Callable[[int, dict], None]) -> None:
    """Align ``theta`` on D_a for n_pos steps, then perturb with D_t, recording at each n_neg."""
    lr = self.cfg.law.align_lr
    aligned = net.train(theta, (0.0, 1.0, 0.0), n_pos, lr, seed=4000 + seed, progress=self.progress)
    record(0, net.rates(aligned))
    marks = sorted(x for x in n_neg if x > 0)
    if marks:
      got = {}
      net.train(aligned, (0.0, 0.0, 1.0), marks[-1], lr, seed=5000 + seed, every=1,
                progress=self.progress,
                callback=lambda s, p: got.__setitem__(s, net.rates(p)) if s in marks else None)
      for s in marks:
        record(s, got[s])

  def run_rebound(self) -> None:
    c = self.cfg.rebound
    k, n_neg = float(c.k), ints(c.n_neg, "rebound.n_neg")
    for n_pos in ints(c.n_pos, "rebound.n_pos"):
      for seed in self.seeds:
        net = self.net()
        theta0 = self.pretrained(k, seed)
        r0 = net.rates(theta0)
        cell = f"rebound/k={k:g}/n_pos={n_pos}/seed={seed}"
        self.add("rebound", cell, "base", seed, {"k": k, "n_pos": n_pos, "n_neg": -1,
                                                 "stage": "base"}, _rate_metrics(r0))
        self._align_perturb(net, theta0, n_pos, n_neg, seed, lambda s, r: self.add(
            "rebound", cell, f"n_neg={s}", seed,
            {"k": k, "n_pos": n_pos, "n_neg": s, "stage": "pos" if s == 0 else "neg",
             "pos_examples": n_pos * net.net.rows_a, "neg_examples": s * net.net.rows_t},
            _rate_metrics(r)))

  def run_scaling(self) -> None:
    c = self.cfg.scaling
    k, n_pos, n_neg = float(c.k), int(c.n_pos), ints(c.n_neg, "scaling.n_neg")
    for hidden, layers in models(c.models, "scaling.models"):
      net = self.net(hidden, layers)
      for pre in ints(c.pretrain_steps, "scaling.pretrain_steps"):
        for seed in self.seeds:
          theta0 = self.pretrained(k, seed, net, pre)
          cell = f"scaling/{hidden}x{layers}/pre={pre}/seed={seed}"
          coords = {"k": k, "hidden": hidden, "layers": layers, "params": param_count(theta0),
                    "pretrain_steps": pre, "pretrain_tokens": pre * net.net.batch * self.world.length,
                    "n_pos": n_pos}
          self._align_perturb(net, theta0, n_pos, n_neg, seed, lambda s, r: self.add(
              "scaling", cell, f"n_neg={s}", seed, {**coords, "n_neg": s}, _rate_metrics(r)))

  def run_rounds(self) -> None:
    c = self.cfg.rounds
    k, lr = float(c.k), self.cfg.law.align_lr
    for seed in self.seeds:
      net = self.net()
      theta = self.pretrained(k, seed)
      cell = f"rounds/k={k:g}/seed={seed}"
      self.add("rounds", cell, "base", seed, {"k": k, "round": 0, "phase": "base"},
               _rate_metrics(net.rates(theta)))
      for rnd in range(1, int(c.rounds) + 1):
        for phase, sizes, steps in (("align", (0.0, 1.0, 0.0), int(c.align_steps)),
                                    ("perturb", (0.0, 0.0, 1.0), int(c.perturb_steps))):
          theta = net.train(theta, sizes, steps, lr, seed=6000 + 10 * seed + rnd,
                            progress=self.progress)
          self.add("rounds", cell, f"round={rnd}/{phase}", seed,
                   {"k": k, "round": rnd, "phase": phase}, _rate_metrics(net.rates(theta)))

  def run_resistance(self) -> None:
    c = self.cfg.resistance
    k, lr = float(c.k), self.cfg.law.align_lr
    marks = ints(c.checkpoints, "resistance.checkpoints")
    if len(marks) < 2 or marks != sorted(set(marks)) or marks[0] < 1:
      raise ValueError(f"config.resistance.checkpoints: need >= 2 increasing step counts >= 1; "
                       f"got {marks}")
    for seed in self.seeds:
      net = self.net()
      theta0 = self.pretrained(k, seed)
      ckpt = {}
      net.train(theta0, (0.0, 1.0, 0.0), marks[-1], lr, seed=7000 + seed, every=1,
                progress=self.progress,
                callback=lambda s, p: ckpt.__setitem__(s, p) if s in marks else None)
      thetas = [ckpt[m] for m in marks]
      data = [net.sample(p, int(c.samples), seed=8000 + 10 * seed + i) for i, p in enumerate(thetas)]
      own = [float(net.sequence_bits(p, d).mean()) / self.world.length for p, d in zip(thetas, data)]
      for i in range(len(marks)):
        for j in range(i + 1, len(marks)):
          for direction, src, dst in (("forward", i, j), ("inverse", j, i)):
            trained = net.fit(thetas[src], data[dst], int(c.steps), lr, seed=9000 + seed)
            loss = float(net.sequence_bits(trained, data[dst]).mean()) / self.world.length
            before = float(net.sequence_bits(thetas[src], data[dst]).mean()) / self.world.length
            self.add("resistance", f"resistance/k={k:g}/seed={seed}",
                     f"{direction}/theta{src + 1}->theta{dst + 1}", seed,
                     {"k": k, "pair": f"theta{min(i, j) + 1}-theta{max(i, j) + 1}",
                      "direction": direction, "source": src + 1, "target": dst + 1},
                     {"final_loss": loss, "initial_loss": before, "excess": loss - own[dst],
                      "target_own_rate": own[dst]})
            self.progress(int(c.steps))

  def run(self) -> list[dict]:
    for part in self.parts:
      t0 = time.perf_counter()
      getattr(self, f"run_{part}")()
      logging.info("part %s done in %.1f s", part, time.perf_counter() - t0)
    return self.rows


def planned_steps(cfg) -> int:
  """Training steps the config asks for (the progress bar's total; pre-training counted once)."""
  seeds = len(ints(cfg.seeds, "seeds"))
  parts = [p.strip() for p in str(cfg.parts).split(",")]
  law = cfg.law
  total, pre = 0, set()

  def pretrain(k, model, steps):
    nonlocal total
    if (k, model, steps) not in pre:
      pre.add((k, model, steps))
      total += steps * seeds
  base = (int(cfg.net.hidden), int(cfg.net.layers))
  if "law" in parts:
    ks, ls = floats(law.ks, "law.ks"), floats(law.ls, "law.ls")
    for k in ks:
      pretrain(k, base, law.pretrain_steps)
    total += len(ks) * seeds * (len(ls) * law.steps + law.finetune_steps)
  if "resistance" in parts:
    c = cfg.resistance
    pretrain(float(c.k), base, law.pretrain_steps)
    n = len(ints(c.checkpoints, "resistance.checkpoints"))
    total += seeds * (max(ints(c.checkpoints, "resistance.checkpoints")) + n * (n - 1) * int(c.steps))
  if "rebound" in parts:
    c = cfg.rebound
    pretrain(float(c.k), base, law.pretrain_steps)
    n_neg = max(ints(c.n_neg, "rebound.n_neg"))
    total += seeds * sum(n + n_neg for n in ints(c.n_pos, "rebound.n_pos"))
  if "scaling" in parts:
    c = cfg.scaling
    for m in models(c.models, "scaling.models"):
      for p in ints(c.pretrain_steps, "scaling.pretrain_steps"):
        pretrain(float(c.k), m, p)
        total += seeds * (int(c.n_pos) + max(ints(c.n_neg, "scaling.n_neg")))
  if "rounds" in parts:
    c = cfg.rounds
    pretrain(float(c.k), base, law.pretrain_steps)
    total += seeds * int(c.rounds) * (int(c.align_steps) + int(c.perturb_steps))
  return total


def run_lab(cfg, workdir: str | Path, *, progress: bool = True) -> dict[str, Any]:
  """Run the lab of ``cfg`` into ``workdir``: results.jsonl, experiment.json, report.md, plots/.
  Returns {"report": path, "rows": n, "seconds": wall, "cpu_seconds": process CPU time}."""
  workdir = Path(workdir)
  t0, c0 = time.perf_counter(), time.process_time()
  bar = None
  if progress:
    bar = tqdm(total=planned_steps(cfg), desc="theory lab (train steps)", unit="step",
               mininterval=2.0)
  lab = Lab(cfg, progress=bar.update if bar else None)
  try:
    rows = lab.run()
  finally:
    if bar:
      bar.close()
  atomic.write_jsonl(workdir / "results.jsonl", rows)
  wall, cpu = time.perf_counter() - t0, time.process_time() - c0
  atomic.write_json(workdir / "experiment.json", {
      "name": cfg.get("name", "theory_lab"), "variant": cfg.variant, "config": cfg.to_dict(),
      "world": dataclasses.asdict(lab.world_cfg), "net": dataclasses.asdict(lab.net_cfg),
      "params": param_count(lab.net().init_params(0)), "seconds_lab": wall, "cpu_seconds_lab": cpu})
  report = write_report(workdir)
  return {"report": str(report), "rows": len(rows), "seconds": time.perf_counter() - t0,
          "cpu_seconds": time.process_time() - c0}


# --- helpers -----------------------------------------------------------------------------------


def _num(v):
  if isinstance(v, (bool, np.bool_)):
    return float(v)
  v = float(v)
  return None if math.isnan(v) else v


def _rate_metrics(r: dict) -> dict:
  out = {}
  for name in NAMES:
    out[f"gamma_{name}"] = r["gamma"][name]
    out[f"bits_per_token_{name}"] = r["bits_per_token"][name]
    out[f"share_{name}"] = r["share"][name]
  return out


def _slope(xs, ys) -> float:
  """Least-squares slope of ys on xs (float64)."""
  x, y = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
  xc = x - x.mean()
  return float(xc @ (y - y.mean()) / (xc @ xc))


def _bpt(gamma: float, net: Network, name: str) -> float:
  """bits/token from a normalized γ (adds the support term back)."""
  return float(gamma) + net.log2_support(name)
