"""The training config: every key with its default (`default_config`) and a value check (`validate`).

Experiment files in ``configs/`` start from `default_config()` and change values; the config is
locked, so an unknown key — in a file or a ``--config.x=y`` override — fails when it is set, and
`validate` rejects bad values with a message that names the key. Both happen before any model is
loaded or anything is compiled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
from ml_collections import config_dict

from elasticity import sharding as shd
from elasticity.eval.scorer_config import (ScorerConfigError, detect_kind, require_scorer,
                                           scorer_section)
from elasticity.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLS
from elasticity.train import losses, optimizer

DTYPES = ("float32", "bfloat16", "float16")
REMAT = ("none", "full", "dots", "dots_all")
REFERENCE = ("on_the_fly", "precomputed")
KL_CONTROL = ("fixed", "adaptive")
OPTIONAL_SECTIONS = ("ppo",)    # present only in configs that use them (configs/ppo.py)


def ppo_section(**overrides: Any) -> ml_collections.ConfigDict:
  """The ``ppo`` section of ``objective.name=ppo`` runs; defaults and their sources: docs/ppo.md."""
  p = ml_collections.ConfigDict()
  # The reward: a project scorer folder (load_scorer). Its sign must be set (+1 reward, -1 cost)
  # when it is a one-logit reward/cost model; 0 = unset (fine for classifiers giving a probability).
  p.scorer = scorer_section(sign=0.0)
  p.reward_sign = 1.0             # +1: reward = score; -1: reward = -score (pull toward the other side)
  p.score_clip = 50.0             # |score| clip before it enters the reward (safe-rlhf clip_range_score)
  p.whiten_rewards = False        # whiten each rollout batch's scores before the KL penalty is added
  p.whiten_advantages = True      # whiten advantages per rollout batch
  p.kl_coef = 0.02                # β of the per-token KL penalty to the reference (safe-rlhf kl_coeff)
  p.kl_control = "fixed"          # fixed | adaptive (Ziegler et al. 2019)
  p.kl_target = 6.0               # adaptive: target KL per sequence (nats)
  p.kl_horizon = 10000            # adaptive: horizon in rollout sequences
  p.clip_ratio = 0.2              # ε of the clipped surrogate (safe-rlhf clip_range_ratio)
  p.clip_value = 5.0              # ε_v of the clipped value loss (safe-rlhf clip_range_value)
  p.vf_coef = 0.1                 # weight of the value loss in the shared-trunk loss
  p.gamma = 1.0                   # discount (safe-rlhf)
  p.lam = 0.95                    # GAE λ (safe-rlhf)
  p.ppo_epochs = 1                # passes over each rollout batch (safe-rlhf update_iters)
  p.num_minibatches = 1           # optimizer updates per pass
  p.max_new_tokens = 48           # rollout sampling (elasticity.models.generate)
  p.temperature = 1.0
  p.top_p = 1.0
  p.stop_at_eos = True
  for k, v in overrides.items():
    if k == "scorer":
      p.scorer = scorer_section(**dict(v))
    else:
      setattr(p, k, v)
  return p


def one_logit(path) -> bool:
  """Whether the scorer folder ``path`` holds a one-logit (reward/cost) model (reads config.json)."""
  if detect_kind(path) != "hf":
    return False
  hf = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
  archs = " ".join(hf.get("architectures") or ())
  return (hf.get("num_labels") == 1 or len(hf.get("id2label") or {0: 0, 1: 1}) == 1
          or "ForScore" in archs or "score_type" in hf)


def validate_ppo(cfg: ml_collections.ConfigDict, *, check_scorer: bool = True) -> None:
  """The ``ppo`` section's values (called by `validate` for ``objective.name=ppo``)."""
  if "ppo" not in cfg:
    raise ValueError("config.ppo: objective.name=ppo needs a ppo section (configs/ppo.py builds one)")
  p, ref = cfg.ppo, ppo_section()
  extra = sorted(set(p.keys()) - set(ref.keys()))
  if extra:
    raise ValueError(f"config.ppo: unknown key(s) {extra}")
  if check_scorer:
    try:
      path = require_scorer(p.scorer, "config.ppo.scorer.path")
    except ScorerConfigError as e:
      raise ValueError(str(e)) from None
    if p.scorer.sign not in (1, -1, 1.0, -1.0) and one_logit(path):
      raise ValueError(f"config.ppo.scorer.sign: {path} is a one-logit reward/cost model; set +1 "
                       f"(its logit is a reward) or -1 (a cost), got {p.scorer.sign!r}")
  if p.scorer.sign not in (0, 1, -1, 0.0, 1.0, -1.0):
    raise ValueError(f"config.ppo.scorer.sign: must be +1 (reward), -1 (cost) or 0 (unset, for a "
                     f"classifier), got {p.scorer.sign!r}")
  if p.reward_sign not in (1, -1, 1.0, -1.0):
    raise ValueError(f"config.ppo.reward_sign: must be +1 or -1, got {p.reward_sign!r}")
  _one_of(cfg, "ppo.kl_control", KL_CONTROL)
  for key in ("ppo_epochs", "num_minibatches", "max_new_tokens"):
    if int(p[key]) < 1:
      raise ValueError(f"config.ppo.{key}: must be >= 1, got {p[key]}")
  for key in ("kl_coef", "clip_value", "score_clip", "vf_coef"):
    if p[key] < 0:
      raise ValueError(f"config.ppo.{key}: must be >= 0, got {p[key]}")
  for key, lo, hi in (("clip_ratio", 0.0, 1.0), ("gamma", 0.0, 1.0), ("lam", 0.0, 1.0),
                      ("top_p", 0.0, 1.0)):
    if not lo < p[key] <= hi:
      raise ValueError(f"config.ppo.{key}: must be in ({lo}, {hi}], got {p[key]}")
  if p.temperature <= 0:
    raise ValueError(f"config.ppo.temperature: rollouts sample (> 0), got {p.temperature}")
  if p.kl_target <= 0 or p.kl_horizon <= 0:
    raise ValueError("config.ppo.kl_target and config.ppo.kl_horizon: must be > 0")
  per_update = cfg.train.global_batch_size // p.num_minibatches
  if cfg.train.global_batch_size % p.num_minibatches or per_update % cfg.train.num_microbatches:
    raise ValueError(f"config.ppo.num_minibatches: {p.num_minibatches} minibatches of "
                     f"config.train.global_batch_size={cfg.train.global_batch_size} rollouts must "
                     f"each split into train.num_microbatches={cfg.train.num_microbatches}")
  if cfg.data.pack:
    raise ValueError("config.data.pack: PPO rollouts are one prompt per row (pack=False)")


def scan_layers(cfg, platform: str | None = None) -> bool:
  """The layer layout a run uses: ``config.model.scan_layers``, or when it is None the default of the
  platform it runs on (``platform``, else JAX's default backend) — unrolled on CPU (XLA:CPU runs the
  scanned backward 1.3-1.5x slower in steady state; bench/RESULTS.md), scanned elsewhere (one layer
  compiled instead of L). `elasticity.aot` passes the target's platform: a TPU program is scanned."""
  value = cfg.model.scan_layers
  if value is not None:
    return bool(value)
  return (platform or jax.default_backend()) != "cpu"


def data_section(**overrides: Any) -> ml_collections.ConfigDict:
  """A dataset selection (see `elasticity.train.data`)."""
  d = ml_collections.ConfigDict()
  d.name = "imdb"                 # a name from elasticity.data.available()
  d.split = "train"
  d.load_kwargs = ml_collections.ConfigDict()   # passed to load_dataset, e.g. label="pos"
  d.n = 0                         # records taken in the seeded order (0 = all)
  d.seed = 42
  d.slice = ()                    # (start, stop) within the selection: D_1/D_2/D_3 of the paper
  d.template = "plain"            # plain | alpaca | chat
  d.max_length = 512
  d.pack = False
  d.shuffle = True
  d.policy = "truncate_prompt_left"
  d.add_eos = True
  d.drop_last = False
  d.label_field = "label"         # KTO: the record field holding the desirable/undesirable label
  d.desirable = ()                # KTO: label values that are desirable (() = the label is boolean)
  for k, v in overrides.items():
    if k == "load_kwargs":
      d.load_kwargs = ml_collections.ConfigDict(v)
    else:
      setattr(d, k, v)
  return d


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 42

  c.model = ml_collections.ConfigDict()
  c.model.path = ""               # HF directory, .gguf or llama2.c .bin
  c.model.tokenizer = ""          # "" = the model path (needed separately for llama2.c checkpoints)
  c.model.dtype = "float32"       # compute dtype
  c.model.param_dtype = "float32"  # master-weight dtype (optimizer state follows it)
  c.model.remat = "none"          # per-layer rematerialisation policy
  # The decoder stack as one lax.scan (True: compiles one layer, not L) or unrolled (False); None =
  # per backend (`scan_layers`): unrolled on CPU, whose scanned step is slower in steady state
  # (bench/RESULTS.md, start-up), scanned on accelerators. Both layouts compute the same numbers.
  c.model.scan_layers = config_dict.placeholder(bool)
  c.model.attention_impl = "xla"  # attention core: xla (CPU default) | cudnn (NVIDIA) | splash (TPU)
  c.model.random_init = ""        # a elasticity.models.presets name: random weights instead of path

  c.reference = ml_collections.ConfigDict()
  c.reference.path = ""           # DPO/KTO reference model ("" = the initial policy = model.path)

  c.objective = ml_collections.ConfigDict()
  c.objective.name = "sft"
  c.objective.beta = 0.1
  c.objective.gamma = 0.5
  c.objective.desirable_weight = 1.0
  c.objective.undesirable_weight = 1.0
  c.objective.chunk_size = 128
  c.objective.reference = "on_the_fly"

  c.data = data_section()

  c.eval = ml_collections.ConfigDict()
  c.eval.every = 0                # steps between compression-rate evaluations (0 = off)
  c.eval.batch_size = 8
  c.eval.max_length = 512
  c.eval.datasets = ml_collections.ConfigDict()   # name -> data_section(...)

  c.train = ml_collections.ConfigDict()
  c.train.global_batch_size = 8
  c.train.num_microbatches = 1
  c.train.num_steps = 0           # 0 = num_epochs over the data
  c.train.num_epochs = 1
  c.train.log_every = 10

  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw", lr=1e-5, schedule="constant", warmup_steps=0, end_lr_fraction=0.0,
      weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8, momentum=0.0, clip_norm=1.0))

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1,
                                          dcn_tensor=1, axis_types="auto"))
  c.sharding = ml_collections.ConfigDict()
  c.sharding.rules = shd.DEFAULT_RULES

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 100        # steps (0 = only at the end and on preemption)
  c.checkpoint.keep = 3
  c.checkpoint.async_save = True
  # a checkpoint of the last step: False when nothing restores a completed run (its DONE.json and
  # exports are what is kept; the experiment runner sets it so when it deletes finished cells'
  # checkpoints, saving a ~1.6 GB write and SHA-256 seal per SmolLM2 cell). A run killed between its
  # last step and DONE.json then resumes from its latest periodic checkpoint and recomputes the same
  # steps (exact resume).
  c.checkpoint.at_end = True

  c.export = ml_collections.ConfigDict()
  c.export.hf = True              # write <workdir>/hf at the end
  c.export.dtype = ""             # "" = the parameters' dtype
  # HF snapshots during the run, "name=step,name=step": written to <snapshot_dir>/<name> when the
  # step is reached (the paper's θ1, θ2, θ3 of a base run, which forward/inverse runs start from).
  c.export.snapshots = ""
  c.export.snapshot_dir = ""      # "" = the workdir

  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""   # "" = auto-detect (SLURM, TPU pod, JAX_* variables)
  c.distributed.num_processes = 0
  c.distributed.process_id = -1

  c.metrics = ml_collections.ConfigDict()
  c.metrics.tensorboard = True
  c.metrics.peak_flops = 0.0      # per-device peak FLOP/s for MFU (0 = from the device kind)
  return c


def parse_snapshots(spec: str) -> dict[str, int]:
  """``"theta1=75,theta2=150"`` → ``{"theta1": 75, "theta2": 150}`` (``config.export.snapshots``)."""
  out: dict[str, int] = {}
  for item in (p.strip() for p in str(spec or "").split(",")):
    if not item:
      continue
    name, sep, step = (x.strip() for x in item.partition("="))
    if not sep or not step.isdigit() or int(step) < 1:
      raise ValueError(f"config.export.snapshots: {item!r} is not name=step with a step >= 1")
    if name in ("", ".", "..", "checkpoints", "hf") or "/" in name or "\\" in name or name in out:
      raise ValueError(f"config.export.snapshots: {name!r} is not usable (or repeated) as a "
                       "directory name")
    out[name] = int(step)
  return out


def _one_of(cfg, key: str, allowed) -> None:
  value = cfg
  for part in key.split("."):
    value = value[part]
  if value not in allowed:
    raise ValueError(f"config.{key}: {value!r} is not one of {tuple(allowed)}")


def validate(cfg: ml_collections.ConfigDict, *, check_scorer: bool = True) -> None:
  """Check values (types and names are checked by the locked ConfigDict); raise naming the key.

  ``check_scorer=False``: a PPO run whose scorer is passed in code needs no ``ppo.scorer.path``."""
  reference = default_config()
  for section in reference.keys():
    if section not in cfg:
      raise ValueError(f"config.{section}: missing section")
  for section in ("model", "objective", "train", "optimizer", "mesh", "checkpoint", "export",
                  "distributed", "metrics", "reference", "eval"):
    extra = sorted(set(cfg[section].keys()) - set(reference[section].keys()))
    if extra:
      raise ValueError(f"config.{section}: unknown key(s) {extra}")
  extra = sorted(set(cfg.keys()) - set(reference.keys()) - set(OPTIONAL_SECTIONS))
  if extra:
    raise ValueError(f"config: unknown key(s) {extra}")
  _one_of(cfg, "model.dtype", DTYPES)
  _one_of(cfg, "model.param_dtype", DTYPES)
  _one_of(cfg, "model.remat", REMAT)
  _one_of(cfg, "model.attention_impl", ATTENTION_IMPLS)
  if cfg.model.scan_layers is not None and not isinstance(cfg.model.scan_layers, bool):
    raise ValueError(f"config.model.scan_layers: must be True, False or None (per backend), got "
                     f"{cfg.model.scan_layers!r}")
  _one_of(cfg, "objective.name", losses.ALL_NAMES)
  _one_of(cfg, "objective.reference", REFERENCE)
  _one_of(cfg, "optimizer.name", optimizer.NAMES)
  _one_of(cfg, "optimizer.schedule", optimizer.SCHEDULES)
  _one_of(cfg, "mesh.axis_types", tuple(shd.AXIS_TYPES))
  if cfg.export.dtype:
    _one_of(cfg, "export.dtype", DTYPES)
  parse_snapshots(cfg.export.snapshots)
  if not cfg.model.path and not cfg.model.random_init:
    raise ValueError("config.model.path: required (or config.model.random_init = a preset name)")
  for key in ("train.global_batch_size", "train.num_microbatches", "train.log_every",
              "objective.chunk_size", "data.max_length", "eval.batch_size", "eval.max_length"):
    section, name = key.split(".")
    if int(cfg[section][name]) < 1:
      raise ValueError(f"config.{key}: must be >= 1, got {cfg[section][name]}")
  if cfg.train.global_batch_size % cfg.train.num_microbatches:
    raise ValueError(f"config.train.num_microbatches: {cfg.train.num_microbatches} does not divide "
                     f"config.train.global_batch_size={cfg.train.global_batch_size}")
  if cfg.train.num_steps < 0 or cfg.train.num_epochs < 0 or (
      cfg.train.num_steps == 0 and cfg.train.num_epochs == 0):
    raise ValueError("config.train.num_steps / num_epochs: one must be positive")
  if cfg.optimizer.lr <= 0:
    raise ValueError(f"config.optimizer.lr: must be > 0, got {cfg.optimizer.lr}")
  if cfg.checkpoint.every < 0 or cfg.checkpoint.keep < 1:
    raise ValueError("config.checkpoint.every must be >= 0 and config.checkpoint.keep >= 1")
  if cfg.eval.every < 0:
    raise ValueError(f"config.eval.every: must be >= 0, got {cfg.eval.every}")
  for name, ds in cfg.eval.datasets.items():
    if "name" not in ds:
      raise ValueError(f"config.eval.datasets.{name}: missing key 'name'")
  for axis in shd.MESH_AXES:
    if cfg.mesh[axis] == 0 or cfg.mesh[axis] < -1:
      raise ValueError(f"config.mesh.{axis}: must be positive or -1, got {cfg.mesh[axis]}")
  try:
    shd.validate_rules(cfg.sharding.rules)
  except ValueError as e:
    raise ValueError(f"config.{e}") from None
  if cfg.objective.name in ("dpo", "simpo") and cfg.data.pack:
    raise ValueError("config.data.pack: preference objectives use one pair per row (pack=False)")
  if cfg.objective.name == "ppo":
    validate_ppo(cfg, check_scorer=check_scorer)
  elif "ppo" in cfg:
    raise ValueError(f"config.ppo: only for objective.name=ppo (this run is {cfg.objective.name!r})")
  if cfg.objective.name == "kto" and cfg.data.pack:
    raise ValueError("config.data.pack: KTO uses one example (and its KL sequence) per row "
                     "(pack=False)")
