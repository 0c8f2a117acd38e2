"""Training objectives — SFT, DPO, SimPO, KTO — all on the shared log-prob kernel `token_logprobs`.

Every objective returns *sums and counts*, never means: a dict ``name → (sum, count)`` whose
``"loss"`` entry is what the step differentiates. The step adds sums and counts over microbatches
(and XLA over devices and hosts) and divides once, so the loss of a global batch is
``Σ per-unit losses / Σ units`` — response tokens for SFT, examples (pairs) for the preference
objectives — whatever the microbatching or the mesh.

Batch fields (numpy/jax arrays, leading dimension B):

* SFT and KTO: ``input_ids`` [B, T], ``attention_mask`` [B, T] (1 = real token), ``loss_mask`` [B, T]
  (1 where token t is a response token whose prediction is scored), optional ``positions`` and
  ``segment_ids`` (packed rows); ``loss_mask`` values act as per-token weights. KTO adds ``label``
  [B] (1 desirable, 0 undesirable), optional
  ``ref_logps`` [B] (precomputed reference), optional ``kl_input_ids``/``kl_attention_mask``/
  ``kl_loss_mask`` (mismatched prompt–completion pairs for the reference point z0) and ``ref_kl_logps``.
* DPO and SimPO: the SFT fields prefixed ``chosen_`` and ``rejected_``; DPO optionally
  ``ref_chosen_logps``/``ref_rejected_logps`` [B] (precomputed once by `reference_logps`); without
  them the reference model is run on the fly (no gradient).
* Preference objectives count examples; an optional ``example_mask`` [B] (0 = a padding row of the
  last batch) keeps padding rows out of sums and counts.

The closed-form cores (`dpo_losses`, `simpo_losses`, `kto_losses`, `sft_sums`) are pure functions of
log-probabilities, tested against their analytic values and gradients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp

from elasticity.logprobs import token_logprobs, weighted_nll

Array = jax.Array
Sums = dict[str, tuple[Array, Array]]
NAMES = ("sft", "dpo", "simpo", "kto")
ALL_NAMES = NAMES + ("ppo",)   # ppo: on-policy, its own loop and losses (elasticity.train.ppo_*)


# -- closed-form cores ----------------------------------------------------------------------------
def _weights(valid: Array, loss_mask: Array) -> Array:
  # The mask is used as per-token weights (0/1 for plain response masking); a NaN in it propagates.
  return jnp.where(valid, jnp.asarray(loss_mask, jnp.float32), 0.0)


def sft_sums(lp: Array, valid: Array, loss_mask: Array) -> tuple[Array, Array]:
  """(Σ −log p over scored response tokens, number of those tokens); ``loss_mask`` may be weights."""
  w = _weights(valid, loss_mask)
  return -jnp.sum(lp * w), jnp.sum(w)


def sequence_logps(lp: Array, valid: Array, loss_mask: Array) -> tuple[Array, Array]:
  """Per row: (Σ log p over scored response tokens, their number), both [B] float32."""
  w = _weights(valid, loss_mask)
  return jnp.sum(lp * w, axis=-1), jnp.sum(w, axis=-1)


def dpo_losses(pc: Array, pr: Array, rc: Array, rr: Array, beta: float) -> tuple[Array, Array, Array]:
  """DPO (Rafailov et al. 2023): −log σ(β[(π_c − ref_c) − (π_r − ref_r)]) per pair.

  Returns (losses, chosen rewards β(π_c − ref_c), rejected rewards β(π_r − ref_r)), each [B].
  """
  rew_c, rew_r = beta * (pc - rc), beta * (pr - rr)
  return -jax.nn.log_sigmoid(rew_c - rew_r), rew_c, rew_r


def simpo_losses(pc: Array, pr: Array, nc: Array, nr: Array, beta: float, gamma: float
                 ) -> tuple[Array, Array, Array]:
  """SimPO (Meng et al. 2024): −log σ(β π_c/|y_c| − β π_r/|y_r| − γ); no reference model."""
  rew_c, rew_r = beta * pc / jnp.maximum(nc, 1.0), beta * pr / jnp.maximum(nr, 1.0)
  return -jax.nn.log_sigmoid(rew_c - rew_r - gamma), rew_c, rew_r


def kto_losses(p: Array, ref: Array, label: Array, z0: Array, beta: float, desirable_weight: float,
               undesirable_weight: float) -> tuple[Array, Array]:
  """KTO (Ethayarajh et al. 2024) per example: λ_y − v(x, y) with r = π − ref and reference point z0.

  v = λ_D σ(β(r − z0)) for desirable, λ_U σ(β(z0 − r)) for undesirable examples; z0 is not
  differentiated. Returns (losses, rewards β r).
  """
  r = p - ref
  z0 = jax.lax.stop_gradient(z0)
  desirable = jnp.asarray(label) > 0
  v = jnp.where(desirable, desirable_weight * jax.nn.sigmoid(beta * (r - z0)),
                undesirable_weight * jax.nn.sigmoid(beta * (z0 - r)))
  lam = jnp.where(desirable, desirable_weight, undesirable_weight)
  return lam - v, beta * r


# -- model-level objectives -----------------------------------------------------------------------
def _logps(model, batch: Mapping[str, Array], prefix: str, chunk_size: int) -> tuple[Array, Array]:
  lp, valid = token_logprobs(model, batch[prefix + "input_ids"],
                             attention_mask=batch.get(prefix + "attention_mask"),
                             positions=batch.get(prefix + "positions"),
                             segment_ids=batch.get(prefix + "segment_ids"), chunk_size=chunk_size)
  return sequence_logps(lp, valid, batch[prefix + "loss_mask"])


def _per_example(x: Array, batch: Mapping[str, Array]) -> tuple[Array, Array]:
  """(Σ over real examples, their number): ``example_mask`` [B] (0 = padding row) if present."""
  if "example_mask" not in batch:
    return jnp.sum(x), jnp.asarray(x.shape[0], jnp.float32)
  w = jnp.asarray(batch["example_mask"], jnp.float32)
  return jnp.sum(jnp.where(w > 0, x * w, 0.0)), jnp.sum(w)


@dataclasses.dataclass(frozen=True)
class Objective:
  """A training objective: ``obj(model, batch, ref_model=None) -> {name: (sum, count)}``."""
  name: str
  beta: float = 0.1
  gamma: float = 0.5
  desirable_weight: float = 1.0
  undesirable_weight: float = 1.0
  chunk_size: int = 128

  def __post_init__(self):
    if self.name not in NAMES:
      raise ValueError(f"objective.name: {self.name!r} is not one of {NAMES}")

  @property
  def uses_reference(self) -> bool:
    return self.name in ("dpo", "kto")

  def reference_fields(self, batch_keys=()) -> tuple[str, ...]:
    """Batch fields that, when present, replace running the reference model (KTO's KL rows too)."""
    if self.name == "kto":
      return ("ref_logps",) + (("ref_kl_logps",) if self.has_kl_rows(batch_keys) else ())
    return {"dpo": ("ref_chosen_logps", "ref_rejected_logps")}.get(self.name, ())

  def needs_reference_model(self, batch_keys) -> bool:
    return self.uses_reference and not all(k in batch_keys for k in self.reference_fields(batch_keys))

  def has_kl_rows(self, batch_keys) -> bool:
    """Whether a batch carries KTO's mismatched KL rows (z0 is then estimated from them)."""
    return self.name == "kto" and "kl_input_ids" in batch_keys

  def kl_sums(self, model, batch: Mapping[str, Array], ref_model=None) -> tuple[Array, Array]:
    """KTO's reference point in parts: (Σ over real rows of π − ref on the mismatched KL rows, rows).

    The train step adds these over all microbatches and passes ``kl_z0 = max(0, Σ / rows)`` to
    every microbatch, so z0 is the estimate of the whole global batch (not of one microbatch of
    maybe one row); without ``kl_z0`` `_kto` computes it from its own rows. No gradient flows.
    """
    pk, _ = _logps(model, batch, "kl_", self.chunk_size)
    rk = batch["ref_kl_logps"] if "ref_kl_logps" in batch else self._ref(ref_model, batch, "kl_")
    s, n = _per_example(pk - rk, batch)
    return jax.lax.stop_gradient(s), n

  def __call__(self, model, batch: Mapping[str, Array], ref_model=None) -> Sums:
    fn: Callable[..., Sums] = getattr(self, "_" + self.name)
    return fn(model, batch, ref_model)

  def _ref(self, ref_model, batch, prefix) -> Array:
    if ref_model is None:
      fields = ", ".join(self.reference_fields(batch.keys()))
      raise ValueError(f"objective {self.name}: batch has no precomputed reference log-probs "
                       f"({fields}) and no reference model was given")
    logp, _ = _logps(ref_model, batch, prefix, self.chunk_size)
    return jax.lax.stop_gradient(logp)

  def _sft(self, model, batch, ref_model) -> Sums:
    # = sft_sums(*token_logprobs(...), loss_mask), through the fused head (one GEMM fewer).
    s, n = weighted_nll(model, batch["input_ids"], batch["loss_mask"],
                        attention_mask=batch.get("attention_mask"), positions=batch.get("positions"),
                        segment_ids=batch.get("segment_ids"), chunk_size=self.chunk_size)
    return {"loss": (s, n)}

  def _dpo(self, model, batch, ref_model) -> Sums:
    pc, _ = _logps(model, batch, "chosen_", self.chunk_size)
    pr, _ = _logps(model, batch, "rejected_", self.chunk_size)
    if "ref_chosen_logps" in batch and "ref_rejected_logps" in batch:
      rc, rr = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    else:
      rc, rr = self._ref(ref_model, batch, "chosen_"), self._ref(ref_model, batch, "rejected_")
    losses, rew_c, rew_r = dpo_losses(pc, pr, rc, rr, self.beta)
    return {"loss": _per_example(losses, batch),
            "reward_margin": _per_example(rew_c - rew_r, batch),
            "reward_accuracy": _per_example((rew_c > rew_r).astype(jnp.float32), batch)}

  def _simpo(self, model, batch, ref_model) -> Sums:
    pc, nc = _logps(model, batch, "chosen_", self.chunk_size)
    pr, nr = _logps(model, batch, "rejected_", self.chunk_size)
    losses, rew_c, rew_r = simpo_losses(pc, pr, nc, nr, self.beta, self.gamma)
    return {"loss": _per_example(losses, batch),
            "reward_margin": _per_example(rew_c - rew_r, batch),
            "reward_accuracy": _per_example((rew_c > rew_r).astype(jnp.float32), batch)}

  def _kto(self, model, batch, ref_model) -> Sums:
    p, _ = _logps(model, batch, "", self.chunk_size)
    ref = batch["ref_logps"] if "ref_logps" in batch else self._ref(ref_model, batch, "")
    if "kl_z0" in batch:          # the global batch's estimate (see `kl_sums`)
      z0 = jnp.asarray(batch["kl_z0"], jnp.float32)
    elif self.has_kl_rows(batch):
      # z0 = max(0, mean KL estimate on mismatched pairs), as in the KTO paper; the mean is over
      # real rows only: padding rows (example_mask 0) do not enter it.
      z0 = reference_point(*self.kl_sums(model, batch, ref_model))
    else:
      z0 = jnp.zeros((), jnp.float32)
    losses, rewards = kto_losses(p, ref, batch["label"], z0, self.beta, self.desirable_weight,
                                 self.undesirable_weight)
    real = (jnp.asarray(batch["example_mask"], jnp.float32) if "example_mask" in batch
            else jnp.ones_like(p))
    desirable = (jnp.asarray(batch["label"]) > 0).astype(jnp.float32)

    def among(w):   # (Σ rewards over the rows weighted by w, Σ w)
      return jnp.sum(jnp.where(w > 0, rewards * w, 0.0)), jnp.sum(w)
    return {"loss": _per_example(losses, batch), "reward": _per_example(rewards, batch),
            "reward_desirable": among(real * desirable),
            "reward_undesirable": among(real * (1.0 - desirable)), "kl_z0": (z0, jnp.ones(()))}


def reference_point(kl_sum: Array, n_rows: Array) -> Array:
  """KTO's z0 = max(0, mean KL estimate) from `Objective.kl_sums` (added over microbatches)."""
  return jnp.maximum(kl_sum / jnp.maximum(n_rows, 1.0), 0.0)


def reference_logps(objective: Objective, ref_model, batch: Mapping[str, Array]) -> dict[str, Array]:
  """The reference fields of ``batch`` computed with ``ref_model`` (to precompute them once)."""
  if objective.name == "dpo":
    return {"ref_chosen_logps": _logps(ref_model, batch, "chosen_", objective.chunk_size)[0],
            "ref_rejected_logps": _logps(ref_model, batch, "rejected_", objective.chunk_size)[0]}
  if objective.name == "kto":
    out = {"ref_logps": _logps(ref_model, batch, "", objective.chunk_size)[0]}
    if objective.has_kl_rows(batch):
      out["ref_kl_logps"] = _logps(ref_model, batch, "kl_", objective.chunk_size)[0]
    return out
  return {}


def objective_from_config(cfg: Mapping[str, Any]) -> Objective:
  """An `Objective` from a config section; unknown keys raise naming the key."""
  fields = {f.name for f in dataclasses.fields(Objective)}
  extra = {"reference"}
  unknown = sorted(set(cfg) - fields - extra)
  if unknown:
    raise ValueError(f"objective: unknown key(s) {unknown}; known: {sorted(fields | extra)}")
  return Objective(**{k: v for k, v in dict(cfg).items() if k in fields})
