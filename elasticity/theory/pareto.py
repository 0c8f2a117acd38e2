"""The Pareto assumption (A.7) on real data: maximum-likelihood fits of a token tree's leaf masses per
depth, Pareto against lognormal and exponential, compared by log-likelihood, AIC and the KS distance.

For the masses x_1..x_n of the depth-d nodes (the leaves of the tree pruned at d) above a lower cut
x_min (the smallest mass, or a tail cut), the fitted models and their MLEs are

    Pareto(α, x_min):       f = α x_min^α x^{−α−1};      α̂ = n / Σ ln(x_i/x_min)
    lognormal(μ, σ):        ln x ~ N(μ, σ²);             μ̂, σ̂² = mean and (biased) variance of ln x
    exponential(λ, x_min):  f = λ e^{−λ(x − x_min)};     λ̂ = 1 / mean(x − x_min)

(x_min is the cut, not a fitted parameter, for Pareto and exponential alike). Empirical masses are
counts / |D|, so they are discrete: many nodes share the smallest count, and the KS distance of any
continuous model is at least about the share of the most common count — reported as ``tied_share``.
Log-likelihood differences do not depend on the unit of x (every density picks up the same Jacobian).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import log_ndtr, ndtr

MODELS = ("pareto", "lognormal", "exponential")


@dataclass(frozen=True)
class Fit:
  model: str
  params: dict
  loglik: float
  aic: float
  ks: float

  def to_dict(self) -> dict:
    return asdict(self)


def _ks(x_sorted: np.ndarray, cdf: np.ndarray) -> float:
  """sup |F_n − F| over the sample, F_n evaluated just before and at each point."""
  n = x_sorted.size
  # at tied values the empirical CDF jumps once: use the last index of each run of equal values
  _, first, counts = np.unique(x_sorted, return_index=True, return_counts=True)
  hi = (first + counts) / n
  lo = first / n
  c = cdf[first]
  return float(max(np.max(np.abs(hi - c)), np.max(np.abs(c - lo))))


def fit_all(x, x_min: float | None = None) -> list[Fit]:
  """Fit every model in ``MODELS`` to the values ``x`` >= ``x_min`` (default: min(x))."""
  x = np.asarray(x, np.float64).reshape(-1)
  if x.size < 3 or not np.isfinite(x).all() or (x <= 0).any():
    raise ValueError(f"fit_all: need >= 3 finite positive values, got {x.size} "
                     f"(min {x.min() if x.size else None})")
  x_min = float(x.min()) if x_min is None else float(x_min)
  x = np.sort(x[x >= x_min])
  n = x.size
  if n < 3:
    raise ValueError(f"fit_all: fewer than 3 values >= x_min = {x_min}")
  lx = np.log(x)
  fits = []
  s = float(np.sum(lx - math.log(x_min)))
  if s > 0:
    a = n / s
    ll = n * math.log(a) + n * a * math.log(x_min) - (a + 1) * float(lx.sum())
    fits.append(Fit("pareto", {"alpha": a, "x_min": x_min}, ll, 2 * 1 - 2 * ll,
                    _ks(x, 1 - (x_min / x) ** a)))
  mu, sig = float(lx.mean()), float(lx.std())
  if sig > 0:
    ll = float(np.sum(-lx - math.log(sig) - 0.5 * math.log(2 * math.pi) - (lx - mu) ** 2 / (2 * sig ** 2)))
    cdf = ndtr((lx - mu) / sig)
    fits.append(Fit("lognormal", {"mu": mu, "sigma": sig}, ll, 2 * 2 - 2 * ll, _ks(x, cdf)))
  m = float(np.mean(x - x_min))
  if m > 0:
    lam = 1 / m
    ll = n * math.log(lam) - lam * float(np.sum(x - x_min))
    fits.append(Fit("exponential", {"lambda": lam, "x_min": x_min}, ll, 2 * 1 - 2 * ll,
                    _ks(x, 1 - np.exp(-lam * (x - x_min)))))
  return fits


def tied_share(x) -> float:
  """The share of the values taken by the most common value (a floor on any continuous KS)."""
  _, counts = np.unique(np.asarray(x), return_counts=True)
  return float(counts.max() / counts.sum())


# --------------------------------------------------------------------------------------------------
# Counts: the same three models, binned onto the integers (the masses of an empirical tree are counts)
# --------------------------------------------------------------------------------------------------


def _log_sf(model: str, theta: np.ndarray, x: np.ndarray, lo: float) -> np.ndarray:
  """log P(X > x) of the continuous model (support x >= lo for Pareto and exponential)."""
  if model == "pareto":
    return -theta[0] * np.log(x / lo)
  if model == "exponential":
    return -theta[0] * (x - lo)
  return log_ndtr(-(np.log(x) - theta[0]) / theta[1])


def _count_logpmf(model: str, theta: np.ndarray, c: np.ndarray, c_min: int) -> np.ndarray:
  """log P(count = c | count >= c_min), the model binned on [c − ½, c + ½)."""
  lo = c_min - 0.5
  a, b = _log_sf(model, theta, c - 0.5, lo), _log_sf(model, theta, c + 0.5, lo)
  log_bin = a + np.log1p(-np.exp(np.minimum(b - a, -1e-300)))
  return log_bin - _log_sf(model, theta, np.array([lo]), lo)[0] if model == "lognormal" else log_bin


def fit_counts(counts, c_min: int = 1) -> list[Fit]:
  """Maximum-likelihood fits of the binned Pareto, lognormal and exponential models to integer
  ``counts`` >= ``c_min`` (Pareto and exponential start at c_min − ½; lognormal is truncated there).
  ``ks`` is the largest gap between the empirical and the model CDF over the integers."""
  from scipy.optimize import minimize
  c = np.asarray(counts).reshape(-1)
  if c.size and (not np.issubdtype(c.dtype, np.integer) and not np.all(c == np.rint(c))):
    raise ValueError("fit_counts: counts must be integers")
  c = np.rint(c[c >= c_min]).astype(np.int64)
  if c.size < 3 or np.unique(c).size < 2:
    raise ValueError(f"fit_counts: need >= 3 counts >= {c_min} with at least 2 distinct values")
  vals, mult = np.unique(c, return_counts=True)
  n = c.size
  lo = c_min - 0.5
  starts = {"pareto": [n / float(np.sum(np.log(c / lo)))],
            "lognormal": [float(np.log(c).mean()), max(float(np.log(c).std()), 0.1)],
            "exponential": [1.0 / float(np.mean(c - lo))]}
  fits = []
  for model in MODELS:
    def nll(log_theta, model=model):
      ll = _count_logpmf(model, np.exp(log_theta) if model != "lognormal"
                         else np.array([log_theta[0], math.exp(log_theta[1])]), vals, c_min)
      return -float(mult @ ll) if np.all(np.isfinite(ll)) else 1e300
    x0 = np.array(starts[model], np.float64)
    x0 = np.log(x0) if model != "lognormal" else np.array([x0[0], math.log(x0[1])])
    res = minimize(nll, x0, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-9,
                                                           "maxiter": 3000})
    theta = np.exp(res.x) if model != "lognormal" else np.array([res.x[0], math.exp(res.x[1])])
    grid = np.arange(c_min, int(vals.max()) + 1)
    pmf = np.exp(_count_logpmf(model, theta, grid, c_min))
    emp = np.searchsorted(c[np.argsort(c)], grid, side="right") / n
    ks = float(np.max(np.abs(np.cumsum(pmf) - emp)))
    names = {"pareto": ("alpha",), "exponential": ("lambda",), "lognormal": ("mu", "sigma")}[model]
    k = len(names)
    fits.append(Fit(model, {**dict(zip(names, map(float, theta))), "c_min": int(c_min)},
                    -float(res.fun), 2 * k + 2 * float(res.fun), ks))
  return fits


def vuong_z(counts, fit_a: Fit, fit_b: Fit) -> float:
  """Vuong's normalized log-likelihood ratio of two `fit_counts` fits on the same counts: z > 0
  favours ``fit_a``; |z| < 2 means the data cannot tell the two apart."""
  c_min = fit_a.params["c_min"]
  c = np.rint(np.asarray(counts).reshape(-1)).astype(np.int64)
  c = c[c >= c_min]

  def theta(f: Fit) -> np.ndarray:
    return (np.array([f.params["mu"], f.params["sigma"]]) if f.model == "lognormal"
            else np.array([f.params["alpha" if f.model == "pareto" else "lambda"]]))

  d = (_count_logpmf(fit_a.model, theta(fit_a), c, c_min)
       - _count_logpmf(fit_b.model, theta(fit_b), c, c_min))
  sd = float(d.std())
  return float(d.sum() / (math.sqrt(d.size) * sd)) if sd > 0 else 0.0
