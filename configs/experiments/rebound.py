"""The rebound experiment (paper §5.2, App. B.2, Table 3): ``--config=configs/experiments/rebound.py:<variant>``.

Variants ``<model>,<task>[,<reverse>][,<order>][,<mesh preset>]``:

    tiny                         stories260K on IMDb: n⁺ ∈ {0, 16} × n⁻ ∈ {0, 8, 16}, the control and
                                 neutral arms (tests, seconds)
    smollm2                      SmolLM2-135M-Instruct (the wheel's GGUF) on IMDb, the CPU preset:
                                 reviews cut to 64 tokens, prompts of 8 tokens, n⁺ ∈ {0, 100, 250, 500},
                                 n⁻ ∈ {0, 10, 25, 50, 100, 200}, 100 held-out prompts, 48 new tokens,
                                 seeds 1, 2, 3, the control and neutral arms
    smollm2,imdb,sft,neg_first   the same with the stages' data swapped (align toward negative first)
    llama2-7b,imdb               the paper's grid: n⁺ ∈ {1k, 2k, 5k, 10k}, n⁻ ∈ {100, 200, 500, 1k, 2k}
    gemma-2b,safety,dpo          App. B.2: DPO as the reverse step (pairs with the unsafe response chosen)
    smollm2,imdb,ppo             App. B.2: PPO as the reverse step (reward: the scorer, sign flipped)
    llama2-7b,imdb,sft,neg_first the reversed direction (negative first, then positive)
    llama2-7b,safety,sft,pos_first,tpu_v4   on a TPU v4 pod slice (presets: configs/mesh.py)

task: ``imdb`` or ``safety``; reverse: ``sft`` (default), ``dpo``, ``simpo``, ``kto`` or ``ppo``; order:
``pos_first`` (default) or ``neg_first``. The paper's presets use its SFT hyper-parameters
(``configs/sft.py:paper``: lr 1e-5 constant, global batch 8, one epoch, max length 512, bf16).

Scorers: IMDb continuations are scored by the project's sentiment classifier (default
``$ELASTICITY_RUNS/sentiment``, made by ``python -m launch.scorer --config=configs/scorer.py:imdb
--workdir=…``); safety ones by the project's safety classifier, P(safe) (default
``$ELASTICITY_RUNS/safety``, from ``configs/scorer.py:safety``; the ``smollm2`` preset's score is the mean
P(safe), ``eval.score_as = probability``, since that classifier's outputs sit near 0.5), or a local
cost/reward model set with ``--config.eval.scorer.path`` (with ``--config.eval.scorer.sign=-1`` for a cost model).
``--config.eval.scorer.path=none`` measures Δγ and the KL only.

The reverse step (`elasticity.experiments.rebound.reverse`): DPO/SimPO/KTO train on **prompt-matched
pairs** by default (``pairs.construction = matched``: ``pairs.samples_per_prompt`` continuations of each
stage-2 prompt sampled from the stage's start model, chosen/rejected = the scorer's two extremes, kept
when they differ by ``pairs.margin``, from at most ``pairs.max_prompts`` prompts, 0 = twice the largest
n⁻; saved in the cell's folder), or on the older ``mismatched`` pairs (the rejected response continues
another prompt; no scorer needed). PPO (``ppo_train``: the knobs of `elasticity.train.config.ppo_section`)
rolls out the first n⁻ stage-2 prompts, rewarded by ``ppo_train.scorer`` (path "" = the task's
``eval.scorer``) times ``ppo_train.reward_sign`` (0 = toward the side stage 2 pulls to: −1 for
``pos_first``, +1 for ``neg_first``); n⁻ are whole rollout batches (the paper presets keep the n⁻ of
their grid that are multiples of their batch of 8). The neutral arm trains by SFT whatever the reverse.

n⁺ = 0 is the **control arm** (the base model given the same stage-2 examples, schedule, seeds and
prompts). ``neutral.dataset`` (``alpaca``, ``truthfulqa``, ``truthfulqa_answers``; "" = off) adds the **neutral arm**: stage 2
on data without sentiment with the same budget and schedule, from every stage-1 model and from the base;
the scorer's rating of that data is checked against ``neutral.midpoint`` (default: 0.5 for a
P(positive) classifier, 0 for a reward) ± ``neutral.tolerance`` and refused (``neutral.on_fail =
refuse``) or reported (``report``) when outside. The CPU presets' seeds (1, 2, 3) are the results'; a
pilot that chooses knobs uses seeds ≥ 1000.

Every key can be overridden: ``--config.n_pos=(100,200) --config.train.optimizer.lr=2e-5
--config.eval.sampling.temperature=0.7``.
"""

from __future__ import annotations

import os

import ml_collections

from configs import mesh as mesh_presets
from configs import models as model_presets
from configs.experiments import variants
from configs.sft import paper
from elasticity import paths
from elasticity.eval.scorer_config import scorer_section as eval_scorer_section
from elasticity.train.config import default_config, ppo_section

PAPER_N_POS = (1000, 2000, 5000, 10000)
PAPER_N_NEG = (0, 100, 200, 500, 1000, 2000)
TASKS = ("imdb", "safety")
REVERSES = ("sft", "dpo", "simpo", "kto", "ppo")
ORDERS = ("pos_first", "neg_first")


def scorer_section(path: str = "", sign: float = 1.0) -> ml_collections.ConfigDict:
  s = eval_scorer_section()
  s.path, s.sign = path, sign
  return s


def _runs_dir() -> str:
  fn = getattr(paths, "runs_dir", None)
  return os.fspath(fn()) if fn else os.environ.get("ELASTICITY_RUNS",
                                                   os.path.expanduser("~/elasticity_runs"))


def base(model_name: str, path: str, tokenizer: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.experiment = "rebound"
  c.variant = ""
  c.model = ml_collections.ConfigDict(dict(name=model_name, path=path, tokenizer=tokenizer))
  c.task = "imdb"
  c.reverse = "sft"
  c.order = "pos_first"
  c.seeds = (42,)
  c.neutral = ml_collections.ConfigDict(dict(dataset="", tolerance=0.15, on_fail="refuse"))
  c.neutral.midpoint = ml_collections.FieldReference(None, field_type=float)
  c.n_pos = PAPER_N_POS
  c.n_neg = PAPER_N_NEG
  c.prompt_tokens = 8              # held-out prompts (IMDb): the first tokens of test reviews
  c.data = ml_collections.ConfigDict(dict(max_length=512, template="plain"))
  c.train = default_config()       # the training template of both stages (model.path set per cell)
  c.train.eval.every = 0
  c.train.checkpoint.every = 50
  c.train.checkpoint.keep = 1
  c.train.export.hf = True
  c.eval = ml_collections.ConfigDict()
  c.eval.num_prompts = 500
  c.eval.data_seed = 0             # order of the held-out data (the same for every training seed)
  c.eval.sampling = ml_collections.ConfigDict(dict(max_new_tokens=48, temperature=1.0, top_p=1.0,
                                                   seed=0, batch_size=50))
  c.eval.scorer = scorer_section(os.path.join(_runs_dir(), "sentiment"))
  c.eval.score_text = "completion"  # or "prompt_completion"
  c.eval.score_as = "share"        # a classifier's score: the share called positive, or "probability"
  c.eval.heldout = 200             # held-out positive and negative responses each, for Δγ
  c.eval.heldout_tokens = 64       # IMDb: responses are the first tokens of test reviews
  c.eval.max_length = 128          # compression rows (tokens)
  c.eval.batch_size = 16
  c.eval.kl = True                 # KL(π‖π_base) per generated token
  c.pairs = ml_collections.ConfigDict(dict(construction="matched", samples_per_prompt=4, margin=0.1,
                                           max_prompts=0))
  c.ppo_train = ppo_section(reward_sign=0.0)   # 0: toward the side stage 2 pulls to (from c.order)
  c.table3 = ml_collections.ConfigDict(dict(threshold=0.01, bisect_steps=0))
  c.report = ml_collections.ConfigDict(dict(kl_threshold=c.table3.get_ref("threshold")))
  c.runner = ml_collections.ConfigDict(dict(keep_checkpoints=False, keep_exports=False))
  return c


def tiny() -> ml_collections.ConfigDict:
  path, tok = model_presets.model_path("stories260K")
  c = base("stories260K", path, tok)
  c.n_pos, c.n_neg = (0, 16), (0, 8, 16)
  c.neutral.dataset = "alpaca"
  c.prompt_tokens = 4
  c.data.max_length = 32
  t = c.train
  t.train.global_batch_size = 8
  t.train.log_every = 1
  t.optimizer.update(dict(name="adamw", lr=3e-3, schedule="constant", warmup_steps=0,
                          weight_decay=0.0, clip_norm=1.0))
  t.checkpoint.every = 1
  t.checkpoint.keep = 2
  t.checkpoint.async_save = False
  t.metrics.tensorboard = False
  mesh_presets.apply(t, "cpu")
  c.eval.num_prompts = 8
  c.eval.sampling.update(dict(max_new_tokens=8, batch_size=8))
  c.eval.scorer.path = "none"
  c.eval.heldout = 8
  c.eval.heldout_tokens = 24
  c.eval.max_length = 32
  c.eval.batch_size = 8
  c.ppo_train.update(dict(max_new_tokens=8, ppo_epochs=1))
  c.runner.keep_exports = True
  return c


def smollm2() -> ml_collections.ConfigDict:
  try:
    path = os.fspath(paths.smollm2_gguf())
  except FileNotFoundError:
    path = ""                      # validate() names config.model.path
  c = base("smollm2-135m", path, "")
  c.seeds = (1, 2, 3)
  # TruthfulQA's correct answers, joined to 64 tokens: the IMDb classifier rates them 0.525 ± 0.014,
  # Alpaca's responses 0.706 ± 0.017 (outside 0.5 ± 0.15: the controlled grids of
  # docs/results/rebound-control.md ran with alpaca and neutral.on_fail=report)
  c.neutral.dataset = "truthfulqa_answers"
  c.n_pos, c.n_neg = (0, 100, 250, 500), (0, 10, 25, 50, 100, 200)
  c.data.max_length = 64
  t = c.train
  t.seed = 42
  # one epoch, constant lr, no warm-up: stage 2 is one run with a snapshot at every n⁻ (a multiple of
  # the batch of 5), exactly the separate runs of the paper's design
  t.train.global_batch_size = 5
  t.train.num_microbatches = 1
  t.train.num_epochs = 1
  t.train.num_steps = 0
  t.train.log_every = 10
  # lr 2e-4, chosen by the stage-1 pilot on seed 1000 (docs/results/rebound-pilot.md): at 5e-5 stage 1
  # raised the positive share by 0.08 ± 0.06 (not aligned), at 2e-4 by 0.18 ± 0.07; fixed since
  t.optimizer.update(dict(name="adamw", lr=2e-4, schedule="constant", warmup_steps=0,
                          weight_decay=0.0, clip_norm=1.0))
  # a save of SmolLM2's training state (~1.6 GB, SHA-256-sealed) slows the next ~10 steps by ~3 s
  # on 2 cores (the windows after each save, grid log of 2026-12-06); every 50 steps (~70 s of
  # work) keeps that near 4%. A SIGTERM still checkpoints the current step; a cell's last step is
  # not checkpointed (runner.keep_checkpoints=False: cleanup would delete it).
  t.checkpoint.every = 50
  t.metrics.tensorboard = False
  mesh_presets.apply(t, "cpu")
  c.eval.num_prompts = 100
  c.eval.sampling.update(dict(max_new_tokens=48, batch_size=50))
  c.eval.heldout = 100
  c.eval.heldout_tokens = 64
  c.eval.max_length = 80
  c.runner.keep_exports = False
  return c


def paper_preset(model: str, mesh: str) -> ml_collections.ConfigDict:
  path, tok = model_presets.model_path(model)
  c = base(model, path, tok if tok != path else "")
  paper(c.train)
  c.train.train.num_microbatches = 8
  c.data.max_length = 512
  c.eval.max_length = 512
  mesh_presets.apply(c.train, mesh or model_presets.default_mesh(model))
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = arg or "tiny"
  model, v, rest = variants.parse(arg, [("task", TASKS, "imdb"), ("reverse", REVERSES, "sft"),
                                         ("order", ORDERS, "pos_first"),
                                         ("mesh", mesh_presets.PRESETS, "")])
  task, reverse, order, mesh = v["task"], v["reverse"], v["order"], v["mesh"]
  c = variants.base_config("configs/experiments/rebound.py", arg, model, mesh, rest,
                           "<model>[,imdb|safety][,sft|dpo|simpo|kto|ppo][,pos_first|neg_first][,<mesh preset>]",
                           {"tiny": tiny, "smollm2": smollm2}, paper_preset)
  c.variant, c.task, c.reverse, c.order = arg, task, reverse, order
  if reverse == "ppo" and model not in ("tiny", "smollm2"):   # whole rollout batches (module docstring)
    batch = int(c.train.train.global_batch_size)
    c.n_neg = tuple(n for n in c.n_neg if n % batch == 0)
  if task == "safety":
    c.eval.scorer.path = "none" if model == "tiny" else os.path.join(_runs_dir(), "safety")
    c.eval.scorer.sign = 1.0         # P(safe); a cost model: --config.eval.scorer.sign=-1
    c.prompt_tokens = 0
    if model in ("tiny", "smollm2"):
      # helpful neutral text is rated safe: P(safe) has no neutral midpoint; shown, not refused
      c.neutral.on_fail = "report"
      if model == "smollm2":
        c.neutral.dataset = "alpaca"   # benign instruction data: the known "fine-tuning undoes safety"
        # held-out HH-RLHF answers for Δγ run to 251 SmolLM2 tokens (13-17% are over 79): score them
        # whole, with their prompts' last tokens as context (training keeps max_length 64)
        c.eval.max_length = 256
        # the safety classifier's P(safe) sits near 0.5 (base continuations: mean 0.475, 3% over 0.5):
        # a share would start at its floor, so the score is P(safe) itself
        c.eval.score_as = "probability"
    if model == "tiny":      # HH dialogues are long: room for whole responses
      c.n_pos, c.n_neg = (0, 16), (0, 8)
      c.data.max_length, c.eval.max_length = 128, 512
  c.lock()
  return c
