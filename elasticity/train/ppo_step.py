"""PPO's sharded state and its two jitted functions: scoring a rollout, and one clipped update.

The value function is a **scalar head on the policy** (V(s_t) = w·h_{t−1} + b on the policy's final
hidden state, w and b float32, replicated), not a separate critic: one model is sharded, stored and
run (one forward pass gives both the log-probs and the values), which halves the memory of PPO on
the machines this project targets. safe-rlhf uses a separate critic initialised from its reward
model; the project's scorers are not language models, so there is nothing comparable to start a
critic from. The price is that the value loss (weighted by ``ppo.vf_coef``) also moves the trunk.

The state is the train state of `elasticity.train.step` plus the head and the KL coefficient::

    {"step": int32[] (rollouts done), "params": <policy params>, "head": {"w": [D], "b": []},
     "opt_state": <optax state of {"params", "head"}>, "rng": uint32[2], "kl_coef": float32[]}

sharded like SFT: parameters and their optimizer moments by the logical-axis rules, the rest
replicated, batches over the batch axes (`elasticity.sharding`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from elasticity import sharding as shd
from elasticity.logprobs import chunked_target_logprobs
from elasticity.train import ppo_math


def state_shardings(abstract_model, tx, mesh, rules) -> tuple[dict, dict]:
  """``(abstract_state, shardings)`` of the PPO state (see the module docstring)."""
  graphdef, abstract_vars = nnx.split(abstract_model)
  params_sh = shd.param_shardings(abstract_vars, mesh, rules)
  params = nnx.to_pure_dict(abstract_vars)
  rep = NamedSharding(mesh, P())
  d = abstract_model.config.hidden_size
  head = {"w": jax.ShapeDtypeStruct((d,), jnp.float32), "b": jax.ShapeDtypeStruct((), jnp.float32)}
  trainable_sh = {"params": params_sh, "head": {"w": rep, "b": rep}}
  opt = jax.eval_shape(tx.init, {"params": params, "head": head})
  opt_sh = shd.optimizer_shardings(tx, opt, trainable_sh, mesh)
  scalar = lambda dt: jax.ShapeDtypeStruct((), dt)  # noqa: E731
  abstract = {"step": scalar(jnp.int32), "params": params, "head": head, "opt_state": opt,
              "rng": jax.ShapeDtypeStruct((2,), jnp.uint32), "kl_coef": scalar(jnp.float32)}
  shardings = {"step": rep, "params": params_sh, "head": trainable_sh["head"], "opt_state": opt_sh,
               "rng": rep, "kl_coef": rep}
  return abstract, shardings


def make_init(tx, shardings, seed: int, kl_coef: float, hidden_size: int) -> Callable:
  """Jitted ``(policy params) -> a fresh state`` on ``shardings``; the head starts at 0 (V ≡ 0)."""

  def build(params):
    params = jax.tree.map(jnp.copy, params)   # own buffers: the reference may be these arrays
    head = {"w": jnp.zeros((hidden_size,), jnp.float32), "b": jnp.zeros((), jnp.float32)}
    return {"step": jnp.zeros((), jnp.int32), "params": params, "head": head,
            "opt_state": tx.init({"params": params, "head": head}),
            "rng": jax.random.PRNGKey(seed), "kl_coef": jnp.asarray(kl_coef, jnp.float32)}
  return jax.jit(build, out_shardings=shardings)


def forward(graphdef, params, head, batch: Mapping[str, jax.Array], chunk_size: int
            ) -> tuple[jax.Array, jax.Array]:
  """``(log π(token t | ids[<t]), V(ids[<t]))``, both [B, T] float32, column 0 = 0."""
  model = nnx.merge(graphdef, params)
  ids = jnp.asarray(batch["input_ids"], jnp.int32)
  h = model.hidden_states(ids, batch["attention_mask"])
  lp = chunked_target_logprobs(h[:, :-1], model.output_embedding(), ids[:, 1:],
                               chunk_size=chunk_size, final_softcap=model.config.final_logit_softcap)
  v = jnp.einsum("btd,d->bt", h[:, :-1].astype(jnp.float32), head["w"]) + head["b"]
  pad = lambda x: jnp.pad(x, ((0, 0), (1, 0)))  # noqa: E731
  return pad(lp), pad(v)


def make_score_fn(graphdef, p, chunk_size: int) -> Callable:
  """Jitted ``(state, ref_params, batch, score [B]) -> rollout fields`` (no gradient):
  the old log-probs and values, the reference log-probs, per-token rewards, advantages, returns."""

  def fn(state, ref_params, batch, score):
    mask = batch["mask"].astype(jnp.float32)
    logp, values = forward(graphdef, state["params"], state["head"], batch, chunk_size)
    ref_logp, _ = forward(graphdef, ref_params, state["head"], batch, chunk_size)
    if p.whiten_rewards:
      mean, var = jnp.mean(score), jnp.var(score)
      score = (score - mean) * jax.lax.rsqrt(var + 1e-8)
    rewards, kl = ppo_math.token_rewards(score, logp, ref_logp, mask, state["kl_coef"],
                                         float(p.score_clip))
    adv, returns = ppo_math.gae(rewards, values * mask, mask, float(p.gamma), float(p.lam))
    if p.whiten_advantages:
      adv = ppo_math.whiten(adv, mask)
    seq_kl = jnp.sum(kl, axis=1)
    out = {"old_logp": logp * mask, "old_values": values * mask, "adv": adv, "returns": returns}
    stats = {"score": jnp.mean(score), "kl_per_seq": jnp.mean(seq_kl),
             "reward_per_seq": jnp.mean(jnp.sum(rewards, axis=1)),
             "response_len": jnp.mean(jnp.sum(mask, axis=1)), "value_mean": ppo_math.masked_mean_var(
                 values, mask)[0]}
    return out, stats
  return jax.jit(fn)


def make_update_fn(graphdef, tx, p, mesh, shardings, batch_sh, *, num_microbatches: int,
                   chunk_size: int) -> Callable:
  """Jitted ``(state, minibatch) -> (state, metrics)``: one optimizer update on the clipped policy
  loss + vf_coef · the clipped value loss, averaged over the minibatch's response tokens (gradients
  summed over ``num_microbatches`` interleaved microbatches, divided once). A non-finite loss or
  gradient leaves the state unchanged (``finite = 0``), as in SFT."""
  m = int(num_microbatches)

  def sums(trainable, mb):
    logp, values = forward(graphdef, trainable["params"], trainable["head"], mb, chunk_size)
    mask = mb["mask"]
    out = ppo_math.policy_loss_sums(logp, mb["old_logp"], mb["adv"], mask, float(p.clip_ratio))
    out.update(ppo_math.value_loss_sums(values, mb["old_values"], mb["returns"], mask,
                                        float(p.clip_value)))
    loss = out["policy_loss"][0] + float(p.vf_coef) * out["value_loss"][0]
    out["loss"] = (loss, out["policy_loss"][1])
    return loss, out

  grad_fn = jax.grad(sums, has_aux=True)

  def update(state, batch):
    trainable = {"params": state["params"], "head": state["head"]}
    if m == 1:
      g, s = grad_fn(trainable, batch)
    else:
      mbs = {k: v.reshape((v.shape[0] // m, m) + v.shape[1:]).swapaxes(0, 1) for k, v in batch.items()}

      def body(carry, mb):
        g, s = grad_fn(trainable, mb)
        return jax.tree.map(jnp.add, carry, (g, s)), None
      g0, s0 = jax.eval_shape(grad_fn, trainable, jax.tree.map(lambda x: x[0], mbs))
      zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), (g0, s0))
      (g, s), _ = jax.lax.scan(body, zeros, mbs)
    denom = jnp.maximum(s["loss"][1], 1.0)
    grads = jax.tree.map(lambda x: (x / denom).astype(x.dtype), g)
    loss = s["loss"][0] / denom
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def apply(ops):
      tr, opt, gr = ops
      upd, opt = tx.update(gr, opt, tr)
      return optax.apply_updates(tr, upd), opt

    new_tr, new_opt = jax.lax.cond(finite, apply, lambda ops: ops[:2],
                                   (trainable, state["opt_state"], grads))
    new_state = {**state, "params": new_tr["params"], "head": new_tr["head"], "opt_state": new_opt}
    metrics = {k: v[0] / jnp.maximum(v[1], 1.0) for k, v in s.items()}
    metrics.update(grad_norm=grad_norm, finite=finite.astype(jnp.int32))
    return new_state, metrics

  rep = NamedSharding(mesh, P())
  return shd.jit(update, mesh, in_shardings=(shardings, dict(batch_sh)),
                 out_shardings=(shardings, rep), donate_argnums=(0,))


def batch_shardings(batch: Mapping[str, Any], mesh, rules) -> dict:
  return {k: shd.batch_sharding(mesh, jnp.ndim(v), rules) for k, v in batch.items()}
