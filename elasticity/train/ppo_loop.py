"""PPO (``objective.name=ppo``): on-policy RLHF against a project scorer, resumable like SFT.

    from elasticity.train.loop import train      # dispatches here for objective.name=ppo
    result = train(configs.ppo.get_config("tiny"), workdir)

One step = one rollout batch: ``train.global_batch_size`` prompts from the `PromptStream`, one
continuation each sampled by the policy with the KV cache (`elasticity.train.ppo_rollout`), scored
by the scorer (``ppo.reward_sign`` · score: −1 pulls toward the scorer's negative side), the
per-token KL penalty to the frozen reference (the run's start model, or ``reference.path``), GAE,
then ``ppo.ppo_epochs`` passes of ``ppo.num_minibatches`` clipped updates (`elasticity.train.ppo_step`;
the order of the minibatches is seeded by the step). With ``ppo.kl_control=adaptive`` the KL
coefficient follows Ziegler et al.'s controller and is part of the checkpointed state.

The workdir is the SFT one (`elasticity.train.record`: config.json, metrics.jsonl, checkpoints/,
hf/, DONE.json); a checkpoint holds the state, the prompt stream's position and the step, and the
rollout of step k samples with `rollout_seed(seed, k)`, so a resumed run equals an uninterrupted one
(tests/test_ppo.py). ``stop()`` is polled after every step: True saves a checkpoint and returns
``status="preempted"`` (SIGTERM via `StopOnSignal` in launch/train.py). ``export.snapshots`` exports
the policy at the named rollout steps as the SFT loop does (`elasticity.train.export.Snapshots`: a
snapshot a killed run did not write is written on resume), so one run gives the rebound's PPO points
at every number of rollout prompts. Defaults and their sources: docs/ppo.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable

import jax
import numpy as np
from absl import logging
from flax import nnx

from elasticity import sharding as shd
from elasticity.compression import Evaluator
from elasticity.eval.scorers import scorer_from_config
from elasticity.tokenizers import load_tokenizer
from elasticity.train import compiled
from elasticity.train import config as config_lib
from elasticity.train import export, ppo_math, ppo_rollout, ppo_step, record
from elasticity.train.export import save_export
from elasticity.train.init import (eval_datasets, join_and_mesh, load_model, open_run, random_init,
                                   tokenizer_path)
from elasticity.train.optimizer import make_optimizer
from elasticity.train.record import RunResult
from elasticity.train.step import split_params, with_shardings


def load_ppo_scorer(cfg):
  """The reward scorer of ``config.ppo.scorer`` (sign 0 = unset: +1 for a classifier)."""
  s = cfg.ppo.scorer
  sec = s.copy_and_resolve_references()
  sec.sign = float(s.sign) or 1.0
  return scorer_from_config(sec, "config.ppo.scorer")


def _reference(cfg, host_params, abstract, shardings):
  """The frozen reference's sharded parameters: ``reference.path``, else the start model."""
  if cfg.reference.path:
    ref_cfg = cfg.copy_and_resolve_references()
    ref_cfg.model.path, ref_cfg.model.random_init = cfg.reference.path, ""
    host_params = split_params(load_model(ref_cfg, tokenizer_path(cfg))[0])[1]
  if host_params is None:
    return random_init(cfg, shardings)()
  return shd.host_to_global(host_params, shardings["params"])


def train_ppo(cfg, workdir, *, scorer=None, stop: Callable[[], bool] | None = None,
              on_step: Callable[[int, int, dict], None] | None = None) -> RunResult:
  """Run (or continue) the PPO run of ``cfg`` in ``workdir``; ``scorer`` replaces the configured one."""
  config_lib.validate(cfg, check_scorer=scorer is None)
  workdir = record.resolve_workdir(workdir)
  record.check_config(workdir, cfg)
  done = record.finished(workdir)
  if done is not None:
    return done
  os.makedirs(workdir, exist_ok=True)
  scorer = scorer if scorer is not None else load_ppo_scorer(cfg)
  mesh, rules = join_and_mesh(cfg)
  rows = cfg.train.global_batch_size // int(cfg.ppo.num_minibatches)
  if rows % (shd.batch_divisor(mesh, rules) * cfg.train.num_microbatches):
    raise ValueError(f"config.ppo.num_minibatches: minibatches of {rows} rollouts do not split over "
                     f"{shd.batch_divisor(mesh, rules)} batch shards × train.num_microbatches")
  fingerprint = record.write_config(workdir, cfg)
  t0 = time.perf_counter()
  p = cfg.ppo
  tokenizer = load_tokenizer(tokenizer_path(cfg))
  prompt_texts, prompts = ppo_rollout.load_prompts(cfg.data, tokenizer)
  stream = ppo_rollout.PromptStream(len(prompts), cfg.train.global_batch_size, seed=cfg.seed,
                                    shuffle=cfg.data.shuffle)
  total = cfg.train.num_steps or cfg.train.num_epochs * stream.batches_per_epoch
  updates = total * int(p.ppo_epochs) * int(p.num_minibatches)
  logging.info("ppo: %d prompts, %d rollout steps of %d, %d optimizer updates", len(prompts), total,
               cfg.train.global_batch_size, updates)

  with contextlib.ExitStack() as stack:
    ckpt, writer = open_run(cfg, workdir, stack)
    model, abstract = load_model(cfg, tokenizer_path(cfg), weights=True)
    graphdef, _ = split_params(abstract)
    host_params = split_params(model)[1] if model is not None else None
    del model
    tx, _ = make_optimizer(cfg.optimizer, updates)
    abstract_state, shardings = ppo_step.state_shardings(abstract, tx, mesh, rules)
    ref_params = _reference(cfg, host_params, abstract, shardings)
    if ckpt.latest_step() is not None:
      _, state, data_state, _ = ckpt.restore(with_shardings(abstract_state, shardings))
      stream.restore(data_state)
    else:
      start = ref_params
      if cfg.reference.path:      # the policy starts from model.path, the reference is elsewhere
        start = (shd.host_to_global(host_params, shardings["params"]) if host_params is not None
                 else random_init(cfg, shardings)())
      init = compiled.get(
          ("ppo_init", compiled.optimizer_key(cfg.optimizer, updates), compiled.tree_key(shardings),
           int(cfg.seed), float(p.kl_coef), abstract.config.hidden_size),
          lambda: ppo_step.make_init(tx, shardings, int(cfg.seed), float(p.kl_coef),
                                     abstract.config.hidden_size))
      state = init(start)
    del host_params
    evaluate = None
    if cfg.eval.every > 0 and cfg.eval.datasets:
      evaluate = Evaluator(eval_datasets(cfg), tokenizer, mesh, rules=rules,
                           chunk_size=cfg.objective.chunk_size, max_length=cfg.eval.max_length,
                           batch_size=cfg.eval.batch_size)
      stack.callback(evaluate.release)
    snapshots = export.Snapshots(cfg, total, cfg.export.snapshot_dir or workdir, graphdef, tokenizer)
    status, step, state, last = _loop(cfg, graphdef, tx, mesh, rules, state, ref_params, stream,
                                      prompts, scorer, tokenizer, ckpt, writer, evaluate, total,
                                      snapshots, stop, on_step)
  export_dir = None
  if status == "completed" and cfg.export.hf:
    export_dir = save_export(snapshots.final_model(state["params"]), os.path.join(workdir, "hf"),
                             dtype=cfg.export.dtype or None, tokenizer=tokenizer)
  logging.info("ppo %s: %d rollout steps in %.1fs", status, step, time.perf_counter() - t0)
  result = RunResult(status, step, total, workdir, export_dir, last)
  if status == "completed":
    record.write_done(workdir, {**dataclasses.asdict(result), "fingerprint": fingerprint})
  return result


def _loop(cfg, graphdef, tx, mesh, rules, state, ref_params, stream, prompts, scorer, tokenizer,
          ckpt, writer, evaluate, total, snapshots, stop, on_step):
  p = cfg.ppo
  opt_key = compiled.optimizer_key(cfg.optimizer, total * int(p.ppo_epochs) * int(p.num_minibatches))
  step = int(jax.device_get(state["step"]))
  stop_tokens = (tokenizer.eos_id,) if p.stop_at_eos and tokenizer.eos_id is not None else ()
  pad_id = int(tokenizer.pad_id)
  chunk = int(cfg.objective.chunk_size)
  pkey = compiled.hashable(p.to_dict())
  score_fn = compiled.get(("ppo_score", graphdef, pkey, chunk),
                          lambda: ppo_step.make_score_fn(graphdef, p, chunk))
  update_fn, last, status = None, {}, "completed"
  n_mb = int(p.num_minibatches)
  snapshots.on_resume(step, state["params"])   # one a killed run did not write
  while step < total:
    idx = next(stream)
    policy = gather_policy(graphdef, state["params"])
    host, new_tokens = ppo_rollout.sample(policy, [prompts[i] for i in idx], p,
                                          seed=ppo_rollout.rollout_seed(cfg.seed, step),
                                          pad_id=pad_id, stop_tokens=stop_tokens)
    texts = [tokenizer.decode([t for t in toks if t not in stop_tokens]) for toks in new_tokens]
    score = float(p.reward_sign) * np.asarray(scorer.score(texts), np.float32)
    batch = shd.global_batch(host, mesh, rules)
    fields, stats = score_fn(state, ref_params, batch, shd.global_batch({"s": score}, mesh, rules)["s"])
    roll = {**host, **{k: np.asarray(v) for k, v in jax.device_get(fields).items()}}
    if update_fn is None:
      b_sh = ppo_step.batch_shardings(_rows(roll, np.arange(len(idx) // n_mb)), mesh, rules)
      key = ("ppo_update", graphdef, pkey, chunk, opt_key, mesh, rules,
             compiled.tree_key(_state_sh(state)), compiled.tree_key(b_sh),
             int(cfg.train.num_microbatches))
      update_fn = compiled.get(key, lambda: ppo_step.make_update_fn(
          graphdef, tx, p, mesh, _state_sh(state), b_sh,
          num_microbatches=cfg.train.num_microbatches, chunk_size=chunk))
    rng = np.random.default_rng([int(cfg.seed), step])
    sums: dict[str, float] = {}
    for _ in range(int(p.ppo_epochs)):
      for part in np.array_split(rng.permutation(len(idx)), n_mb):
        state, m = update_fn(state, shd.global_batch(_rows(roll, part), mesh, rules))
        for k, v in jax.device_get(m).items():
          sums[k] = sums.get(k, 0.0) + float(v) / (int(p.ppo_epochs) * n_mb)
    stats = {k: float(v) for k, v in jax.device_get(stats).items()}
    if p.kl_control == "adaptive":
      kl = ppo_math.adaptive_kl(float(jax.device_get(state["kl_coef"])), stats["kl_per_seq"],
                                float(p.kl_target), float(p.kl_horizon), len(idx))
      state = {**state, "kl_coef": jax.device_put(np.float32(kl), state["kl_coef"].sharding)}
    state = {**state, "step": state["step"] + 1}
    step += 1
    last = {**sums, **stats, "kl_coef": float(jax.device_get(state["kl_coef"]))}
    writer.write(step, last)
    if on_step is not None:
      on_step(step, total, last)
    if step % max(1, cfg.train.log_every) == 0 or step == total:
      logging.info("ppo step %d/%d: score %.4f kl/seq %.4f loss %.4f", step, total, stats["score"],
                   stats["kl_per_seq"], sums.get("loss", float("nan")))
    if evaluate is not None and step % cfg.eval.every == 0:
      res = dict(evaluate(gather_policy(graphdef, state["params"])))
      if res:
        writer.write(step, res, kind="eval")
    preempt = bool(stop()) if stop is not None else False
    meta = {"objective": "ppo", "total_steps": total}
    if ckpt.should_save(step, total) or preempt:
      ckpt.save(step, state, stream.state(), meta, wait=preempt)
    snapshots.after_step(step, state["params"])
    if preempt:
      status = "preempted"
      logging.warning("stopped at step %d on request; checkpoint saved in %s", step, ckpt.directory)
      break
  if status == "completed" and ckpt.at_end:
    ckpt.save(step, state, stream.state(), {"objective": "ppo", "total_steps": total}, wait=True)
  ckpt.wait()
  return status, step, state, last


def gather_policy(graphdef, params):
  """The policy as an nnx model over the state's (sharded) parameters, for `generate`."""
  return nnx.merge(graphdef, params)


def _rows(batch: dict, idx: np.ndarray) -> dict:
  return {k: np.asarray(v)[idx] for k, v in batch.items()}


def _state_sh(state) -> dict:
  return jax.tree.map(lambda x: x.sharding, state)
