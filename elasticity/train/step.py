"""The train state, its shardings, its sharded creation, and the jitted train step.

The train state is a plain pytree::

    {"step": int32[], "params": <pure dict of the model's nnx.Param values>,
     "opt_state": <optax state>, "rng": uint32[2]}

Creation never materialises the whole model on one device: shapes come from `jax.eval_shape`, the
shardings from the parameters' logical axes (`elasticity.sharding`), and the values from a jitted
initialiser with ``out_shardings`` (random init) or from host arrays placed shard by shard
(pretrained weights).

`make_train_step` returns ``step(state, batch[, ref_params]) -> (state, metrics)`` jitted with
``in_shardings``/``out_shardings`` and the state donated. Inside, the global batch is cut into
``num_microbatches`` interleaved microbatches (row i goes to microbatch i mod M, so every device keeps
its rows) and a `lax.scan` accumulates gradient *sums* and the objective's (sum, count) pairs;
the loss and gradient are divided once by the global count. KTO's reference point z0 is estimated
on the whole global batch first (a forward pass over the microbatches' KL rows), so accumulation
does not change it. A step whose loss or gradient norm is not finite leaves the state unchanged and
reports ``finite = 0``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from elasticity import sharding as shd
from elasticity.train.losses import Objective, reference_logps, reference_point

TrainState = dict[str, Any]


def split_params(model: nnx.Module) -> tuple[nnx.GraphDef, dict]:
  """``(graphdef, params)`` with params as a pure dict (the train state's form)."""
  graphdef, state = nnx.split(model)
  return graphdef, nnx.to_pure_dict(state)


def state_shardings(abstract_model: nnx.Module, tx: optax.GradientTransformation, mesh: Mesh,
                    rules: shd.Rules = shd.DEFAULT_RULES) -> tuple[TrainState, TrainState]:
  """``(abstract_state, shardings)``: ShapeDtypeStruct and NamedSharding trees of the train state."""
  _, abstract_vars = nnx.split(abstract_model)
  params_sh = shd.param_shardings(abstract_vars, mesh, rules)
  abstract_params = nnx.to_pure_dict(abstract_vars)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  opt_sh = shd.optimizer_shardings(tx, abstract_opt, params_sh, mesh)
  replicated = NamedSharding(mesh, P())
  abstract = {"step": jax.ShapeDtypeStruct((), jnp.int32), "params": abstract_params,
              "opt_state": abstract_opt, "rng": jax.ShapeDtypeStruct((2,), jnp.uint32)}
  shardings = {"step": replicated, "params": params_sh, "opt_state": opt_sh, "rng": replicated}
  return abstract, shardings


def with_shardings(abstract: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying their NamedSharding (restore targets, AOT lowering)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def init_train_state(params: Mapping | Callable[[], Mapping], tx: optax.GradientTransformation,
                     shardings: TrainState, seed: int, *,
                     opt_init: Callable[[Mapping], Any] | None = None) -> TrainState:
  """A sharded train state from host parameters (a pure dict) or a parameter-initialising function.

  A function is jitted with ``out_shardings``, so each device computes only its own shards. Host
  values (e.g. a pretrained checkpoint read on the host) are placed shard by shard; global
  ``jax.Array`` values already on their shardings are used as they are. ``opt_init`` is the jitted
  optimizer initialiser to use (`make_opt_init`; a cached one compiles once per process).
  """
  if callable(params):
    params = jax.jit(params, out_shardings=shardings["params"])()
  elif not all(isinstance(x, jax.Array) and x.sharding == s
               for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings["params"]))):
    params = shd.host_to_global(params, shardings["params"])
  opt_state = (opt_init or make_opt_init(tx, shardings))(params)
  rep = shardings["step"]
  step = jax.device_put(jnp.zeros((), jnp.int32), rep)
  rng = jax.device_put(jax.random.PRNGKey(seed), rep)
  return {"step": step, "params": params, "opt_state": opt_state, "rng": rng}


def make_opt_init(tx: optax.GradientTransformation, shardings: TrainState) -> Callable:
  """``tx.init`` jitted onto the optimizer state's shardings."""
  return jax.jit(tx.init, out_shardings=shardings["opt_state"])


def _microbatches(batch: Mapping[str, jax.Array], m: int) -> dict[str, jax.Array]:
  """[B, ...] → [M, B/M, ...] with row i in microbatch i mod M (keeps rows on their devices)."""
  out = {}
  for k, v in batch.items():
    b = v.shape[0]
    if b % m:
      raise ValueError(f"batch[{k!r}]: {b} rows are not divisible into {m} microbatches")
    out[k] = v.reshape((b // m, m) + v.shape[1:]).swapaxes(0, 1)
  return out


def make_train_step(graphdef: nnx.GraphDef, objective: Objective, tx: optax.GradientTransformation,
                    schedule: Callable[[Any], Any], mesh: Mesh, shardings: TrainState,
                    batch_shardings: Mapping[str, NamedSharding], *, num_microbatches: int = 1,
                    ref_graphdef: nnx.GraphDef | None = None, ref_shardings: Any = None,
                    rules: shd.Rules = shd.DEFAULT_RULES, donate: bool = True) -> Callable:
  """The jitted train step (see the module docstring). With ``ref_graphdef`` it takes ref params."""
  m = int(num_microbatches)
  if m < 1:
    raise ValueError(f"train.num_microbatches: must be >= 1, got {m}")
  with_ref = ref_graphdef is not None
  param_sh = jax.tree.map(lambda s: shd.constraint(s, mesh), shardings["params"])

  def constrain_batch(mb):
    return {k: jax.lax.with_sharding_constraint(
        v, shd.constraint(shd.batch_sharding(mesh, v.ndim, rules), mesh)) for k, v in mb.items()}

  def micro_loss(params, mb, ref_params):
    model = nnx.merge(graphdef, params)
    ref = nnx.merge(ref_graphdef, ref_params) if with_ref else None
    sums = objective(model, mb, ref)
    return sums["loss"][0], sums

  grad_fn = jax.grad(micro_loss, has_aux=True)

  def kl_z0(params, mbs, ref_params):
    """KTO's reference point over the whole global batch (forward only, summed over microbatches)."""
    def body(carry, mb):
      ref = nnx.merge(ref_graphdef, ref_params) if with_ref else None
      s, n = objective.kl_sums(nnx.merge(graphdef, params), constrain_batch(mb), ref)
      return (carry[0] + s, carry[1] + n), None
    zero = jnp.zeros((), jnp.float32)
    (s, n), _ = jax.lax.scan(body, (zero, zero), mbs)
    return reference_point(s, n)

  def step(state, batch, ref_params=None):
    params = state["params"]
    mbs = _microbatches(batch, m) if m > 1 else None
    extra = {}
    if m > 1 and objective.has_kl_rows(batch):
      extra["kl_z0"] = kl_z0(params, mbs, ref_params)

    def body(carry, mb):
      g_acc, s_acc = carry
      g, sums = grad_fn(params, {**constrain_batch(mb), **extra}, ref_params)
      g_acc = jax.tree.map(jnp.add, g_acc, g)
      g_acc = jax.lax.with_sharding_constraint(g_acc, param_sh)
      s_acc = jax.tree.map(jnp.add, s_acc, sums)
      return (g_acc, s_acc), None

    if m == 1:   # no accumulation: skip the loop and the zero-initialised accumulators
      g_sum, sums = grad_fn(params, constrain_batch(dict(batch)), ref_params)
    else:
      mb0 = {**jax.tree.map(lambda x: x[0], mbs), **extra}
      _, sums_shape = jax.eval_shape(grad_fn, params, mb0, ref_params)
      zeros_s = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), sums_shape)
      zeros_g = jax.lax.with_sharding_constraint(jax.tree.map(jnp.zeros_like, params), param_sh)
      (g_sum, sums), _ = jax.lax.scan(body, (zeros_g, zeros_s), mbs)

    loss_sum, count = sums["loss"]
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: (g / denom).astype(g.dtype), g_sum)
    loss = loss_sum / denom
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def apply(operands):
      params, opt_state, rng, grads = operands
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, jax.random.split(rng)[0]

    def skip(operands):
      return operands[:3]

    # A conditional, not a select: the bad step computes no update and copies no state.
    new_params, new_opt, rng = jax.lax.cond(finite, apply, skip,
                                            (params, state["opt_state"], state["rng"], grads))
    new_state = {"step": state["step"] + finite.astype(jnp.int32), "params": new_params,
                 "opt_state": new_opt, "rng": rng}
    metrics = {"loss": loss, "loss_sum": loss_sum, "count": count, "grad_norm": grad_norm,
               "lr": jnp.asarray(schedule(state["step"]), jnp.float32),
               "finite": finite.astype(jnp.int32)}
    for k, (s, n) in sums.items():
      if k != "loss":
        metrics[k] = s / jnp.maximum(n, 1.0)
    return new_state, metrics

  replicated = NamedSharding(mesh, P())
  in_sh = (shardings, dict(batch_shardings)) + ((ref_shardings,) if with_ref else ())
  fn = step if with_ref else (lambda state, batch: step(state, batch))
  return shd.jit(fn, mesh, in_shardings=in_sh, out_shardings=(shardings, replicated),
                 donate_argnums=(0,) if donate else ())


def batch_shardings(batch: Mapping[str, Any], mesh: Mesh, rules: shd.Rules = shd.DEFAULT_RULES
                    ) -> dict[str, NamedSharding]:
  """The sharding of each batch field (leading dimension over the batch axes)."""
  return {k: shd.batch_sharding(mesh, jnp.ndim(v), rules) for k, v in batch.items()}


def make_reference_fn(ref_graphdef: nnx.GraphDef, objective: Objective, mesh: Mesh,
                      ref_shardings: Any, batch_sh: Mapping[str, NamedSharding]) -> Callable:
  """Jitted ``(ref_params, batch) -> {ref field: [B]}`` to precompute reference log-probs once."""

  def fn(ref_params, batch):
    return reference_logps(objective, nnx.merge(ref_graphdef, ref_params), batch)
  return shd.jit(fn, mesh, in_shardings=(ref_shardings, dict(batch_sh)),
                 out_shardings=NamedSharding(mesh, P()))
