"""SFT configs: the tiny CPU run, and forward / inverse alignment of the paper's models.

    --config=configs/sft.py:tiny                         stories260K on IMDb positive reviews (CPU, <1 min)
    --config=configs/sft.py:llama2-7b                    SFT of the base model on Alpaca (θ checkpoints)
    --config=configs/sft.py:llama2-7b,alpaca,forward     θ1 → trained on D_2  (forward alignment)
    --config=configs/sft.py:llama2-7b,alpaca,inverse     θ2 → trained on D_1  (inverse alignment)
    --config=configs/sft.py:gemma-2b,imdb                rebound stage 1: SFT on positive IMDb reviews
    --config=configs/sft.py:llama2-13b,alpaca,base,tpu_v4   the same on a TPU v4 pod slice

A fourth field names a mesh preset of configs/mesh.py (gpu1, gpu8, gpu8_tp2, tpu_v4, tpu_v5p, tpu_v5e,
tpu_v5e_2slices); the default is the model's own (configs/models.py).

Models: see configs/models.py. Datasets: alpaca, truthfulqa, beavertails, imdb (positive reviews).
Directions (paper §5.1): ``base`` trains the pretrained model on the whole selection and exports
θ1, θ2, θ3 (after each third of the epoch) as HF directories ``<workdir>/theta{1,2,3}``
(``export.snapshots``; ``export.snapshot_dir = ""`` is the run's own workdir, so two runs never
share θ folders); the selection is cut in thirds D_1, D_2, D_3; ``forward`` starts from θ1 and
trains on D_2, ``inverse`` starts from θ2 and trains on D_1. The base run visits the selection **in order**
(``data.shuffle = False``) and each third is a whole number of batches (``data.n`` is rounded down to
3 · batch · ⌊n / (3 · batch)⌋), so θ_k has been trained on exactly D_1 … D_k (tests/test_experiments_resistance.py). Their ``model.path`` defaults to
``<runs_dir>/<model>-<dataset>/theta{1,2}``, with ``runs_dir`` = ``$ELASTICITY_RUNS`` (default
``~/elasticity_runs``, `elasticity.paths.runs_dir`, read when the config is built): run the base
with ``--workdir=$ELASTICITY_RUNS/<model>-<dataset>`` for them to find it, or override
``--config.model.path`` to point at your own θ checkpoints.

Paper hyper-parameters (verified on a released run): max length 512, 1 epoch, global batch 8
(per-device 1 × accumulation 8), lr 1e-5 constant, no warmup, weight decay 0, bf16, seed 42,
gradient checkpointing.
"""

from __future__ import annotations

import os

import ml_collections

from configs import mesh as mesh_presets
from configs import models as model_presets
from elasticity import paths
from elasticity.train.config import data_section, default_config

DATASETS = {
    "alpaca": dict(name="alpaca", split="", template="alpaca", n=1800,
                   load_kwargs=dict(on_error="skip")),
    "truthfulqa": dict(name="truthfulqa", split="", template="alpaca", n=810),
    "beavertails": dict(name="beavertails", split="", template="alpaca", n=138),
    "imdb": dict(name="imdb", split="train", template="plain", n=2000, policy="truncate_response",
                 load_kwargs=dict(label="pos")),
}
DIRECTIONS = ("base", "forward", "inverse")


def base_run_dir(model: str, dataset: str) -> str:
  """Where forward/inverse look for the base run's θ exports: ``<runs_dir>/<model>-<dataset>``."""
  return os.path.join(paths.runs_dir(), f"{model}-{dataset}")


def paper(c: ml_collections.ConfigDict) -> None:
  """The paper's SFT hyper-parameters."""
  c.seed = 42
  c.data.max_length = 512
  c.eval.max_length = 512
  c.train.num_epochs = 1
  c.train.num_steps = 0
  c.train.global_batch_size = 8
  c.train.num_microbatches = 8
  c.optimizer.update(dict(name="adamw", lr=1e-5, schedule="constant", warmup_steps=0,
                          weight_decay=0.0, clip_norm=1.0))
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = "full"


def tiny() -> ml_collections.ConfigDict:
  c = default_config()
  c.model.path, c.model.tokenizer = model_presets.model_path("stories260K")
  c.data = data_section(name="imdb", split="train", load_kwargs=dict(label="pos"), n=240,
                        template="plain", max_length=128, policy="truncate_response", seed=42)
  c.train.global_batch_size = 8
  c.train.num_microbatches = 1
  c.train.num_steps = 30
  c.train.log_every = 10
  c.optimizer.update(dict(name="adamw", lr=3e-3, schedule="cosine", warmup_steps=3,
                          weight_decay=0.0, clip_norm=1.0))
  c.checkpoint.every = 10
  c.checkpoint.keep = 2
  c.eval.every = 15
  c.eval.max_length = 512         # whole reviews: compression skips records that do not fit
  c.eval.datasets = ml_collections.ConfigDict({
      "imdb_pos": data_section(name="imdb", split="test", load_kwargs=dict(label="pos"), n=16,
                               template="plain"),
      "imdb_neg": data_section(name="imdb", split="test", load_kwargs=dict(label="neg"), n=16,
                               template="plain")})
  mesh_presets.apply(c, "cpu")
  return c


def alignment(model: str, dataset: str = "alpaca", direction: str = "base",
              mesh: str = "") -> ml_collections.ConfigDict:
  if dataset not in DATASETS:
    raise ValueError(f"configs/sft.py: unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
  if direction not in DIRECTIONS:
    raise ValueError(f"configs/sft.py: unknown direction {direction!r}; known: {DIRECTIONS}")
  c = default_config()
  paper(c)
  path, tok = model_presets.model_path(model)
  c.model.path, c.model.tokenizer = path, tok
  ds = dict(DATASETS[dataset])
  c.data = data_section(**ds, seed=42, max_length=512)
  # D_k = the k-th third of the selection, a whole number of batches, so that the base run, which
  # visits the selection in order (no shuffle), has seen exactly D_1 … D_k at θ_k's snapshot
  batch = int(c.train.global_batch_size)
  per_third = max(1, ds["n"] // 3 // batch)
  third = per_third * batch
  c.data.n = 3 * third
  run = base_run_dir(model, dataset)
  if direction == "base":
    # θ1, θ2, θ3 = the model after each third of the epoch, exported into the run's workdir
    c.data.shuffle = False
    c.checkpoint.every = per_third
    c.checkpoint.keep = 3
    c.export.snapshot_dir = ""
    c.export.snapshots = ",".join(f"theta{k}={k * per_third}" for k in (1, 2, 3))
  elif direction == "forward":
    c.model.path = os.path.join(run, "theta1")
    c.data.slice = (third, 2 * third)
  else:
    c.model.path = os.path.join(run, "theta2")
    c.data.slice = (0, third)
  c.eval.every = 50
  c.eval.datasets = ml_collections.ConfigDict({
      f"{dataset}_heldout": data_section(**{**ds, "n": 0}, seed=42, max_length=512,
                                         slice=(ds["n"], ds["n"] + 200))})
  mesh_presets.apply(c, mesh or model_presets.default_mesh(model))
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or "tiny"
  if arg == "tiny":
    c = tiny()
  else:
    parts = [p for p in arg.split(",") if p]
    if len(parts) > 4:
      raise ValueError(f"configs/sft.py: variant {arg!r} is not "
                       "<model>[,<dataset>[,<direction>[,<mesh preset>]]]")
    c = alignment(*parts)
  c.lock()
  return c
