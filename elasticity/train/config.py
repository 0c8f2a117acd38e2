"""The training config: every key with its default (`default_config`) and a value check (`validate`).

Experiment files in ``configs/`` start from `default_config()` and change values; the config is
locked, so an unknown key — in a file or a ``--config.x=y`` override — fails when it is set, and
`validate` rejects bad values with a message that names the key. Both happen before any model is
loaded or anything is compiled.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from ml_collections import config_dict

from elasticity import sharding as shd
from elasticity.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLS
from elasticity.train import losses, optimizer

DTYPES = ("float32", "bfloat16", "float16")
REMAT = ("none", "full", "dots", "dots_all")
REFERENCE = ("on_the_fly", "precomputed")


def scan_layers(cfg) -> bool:
  """The layer layout a run uses: ``config.model.scan_layers``, or when it is None the backend's
  default — unrolled on CPU (XLA:CPU runs the scanned backward 1.3-1.5x slower in steady state;
  bench/RESULTS.md), scanned elsewhere (one layer compiled instead of L)."""
  value = cfg.model.scan_layers
  return jax.default_backend() != "cpu" if value is None else bool(value)


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


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Check values (types and names are checked by the locked ConfigDict); raise naming the key."""
  reference = default_config()
  for section in reference.keys():
    if section not in cfg:
      raise ValueError(f"config.{section}: missing section")
  for section in ("model", "objective", "train", "optimizer", "mesh", "checkpoint", "export",
                  "distributed", "metrics", "reference", "eval"):
    extra = sorted(set(cfg[section].keys()) - set(reference[section].keys()))
    if extra:
      raise ValueError(f"config.{section}: unknown key(s) {extra}")
  extra = sorted(set(cfg.keys()) - set(reference.keys()))
  if extra:
    raise ValueError(f"config: unknown key(s) {extra}")
  _one_of(cfg, "model.dtype", DTYPES)
  _one_of(cfg, "model.param_dtype", DTYPES)
  _one_of(cfg, "model.remat", REMAT)
  _one_of(cfg, "model.attention_impl", ATTENTION_IMPLS)
  if cfg.model.scan_layers is not None and not isinstance(cfg.model.scan_layers, bool):
    raise ValueError(f"config.model.scan_layers: must be True, False or None (per backend), got "
                     f"{cfg.model.scan_layers!r}")
  _one_of(cfg, "objective.name", losses.NAMES)
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
  if cfg.objective.name == "kto" and cfg.data.pack:
    raise ValueError("config.data.pack: KTO uses one example (and its KL sequence) per row "
                     "(pack=False)")
