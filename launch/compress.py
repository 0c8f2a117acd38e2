"""Measure compression rates γ (bits/token, bits/byte, normalized) of a model on datasets.

    python -m launch.compress --config=configs/compress.py --config.model=PATH \
        --config.datasets=alpaca,truthfulqa --config.data_dir=DIR --workdir=OUT

Writes ``results.json``, ``results.csv`` and ``results.md`` under ``--workdir`` (each atomically),
with a progress bar per dataset (examples, tokens/s, ETA). With ``--config.baseline=PATH`` the
baseline checkpoint is measured on the same data and Δγ = model − baseline is reported too.
The config is checked (unknown keys, bad values, unknown datasets, missing files) before any model
is loaded or compiled.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from elasticity import paths  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", str(paths.PROJECT_ROOT / "configs" / "compress.py"),
    "Measurement configuration (configs/compress.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for results.json/.csv/.md.", required=True)

CHOICES = {"template": ("plain", "alpaca", "chat"), "on_error": ("raise", "skip"),
           "padding_side": ("right", "left"), "dtype": ("float32", "bfloat16", "float16")}
POSITIVE = ("max_length", "batch_size", "chunk_size")


def _keys(cfg, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in cfg.items():
    if hasattr(v, "items"):
      out.update(_keys(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, with ``--config.<key>`` overrides checked against configs/compress.py first
  (ml_collections would otherwise fail with a bare ``AttributeError``)."""
  from configs.compress import get_config
  known = _keys(get_config())
  for arg in argv[1:]:
    if arg == "--":
      break
    if arg.startswith("--config."):
      key = arg[len("--config."):].split("=", 1)[0]
      if key not in known:
        raise SystemExit(f"FATAL: unknown config key {'config.' + key!r} (from {arg!r}); known keys: "
                         f"{', '.join(sorted(known))}")
  return flags.FLAGS(argv)


def validate(cfg) -> list[str]:
  """Raise ``ValueError`` naming the first bad key; return the dataset names."""
  from configs.compress import get_config
  from elasticity import data
  known = _keys(get_config())
  for key in _keys(cfg):
    if key not in known:
      raise ValueError(f"config: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
  for key, allowed in CHOICES.items():
    if cfg[key] not in allowed:
      raise ValueError(f"config.{key}: {cfg[key]!r} is not one of {allowed}")
  for key in POSITIVE:
    if not isinstance(cfg[key], int) or cfg[key] < 1:
      raise ValueError(f"config.{key}: must be a positive integer, got {cfg[key]!r}")
  if cfg.max_length < 2:
    raise ValueError(f"config.max_length: must be at least 2, got {cfg.max_length}")
  if cfg.limit < 0:
    raise ValueError(f"config.limit: must be >= 0 (0 = all), got {cfg.limit}")
  names = [d.strip() for d in str(cfg.datasets).split(",") if d.strip()]
  if not names:
    raise ValueError("config.datasets: no dataset named (a comma list, e.g. alpaca,truthfulqa)")
  for name in names:
    if name not in data.available():
      raise ValueError(f"config.datasets: unknown dataset {name!r}; available: "
                       f"{', '.join(data.available())}")
  for key in ("model", "tokenizer", "baseline", "data_dir"):
    if cfg[key] and not Path(cfg[key]).expanduser().exists():
      raise ValueError(f"config.{key}: {cfg[key]} does not exist")
  if cfg.model.endswith(".bin") and not cfg.tokenizer:
    raise ValueError("config.tokenizer: a llama2.c .bin model needs its tokenizer.bin")
  return names


def _load_records(name: str, cfg) -> tuple[list[dict], int]:
  from elasticity import data
  kw = {}
  if cfg.data_dir:
    kw["data_dir"] = Path(cfg.data_dir).expanduser() / name
  records = data.load_dataset(name, cfg.split or None, on_error=cfg.on_error, **kw)
  n_bad = getattr(records, "n_skipped", 0)
  if cfg.limit:
    records = records[:cfg.limit]
  return records, n_bad


def _row(name: str, checkpoint: str, report, bad_records: int) -> dict[str, Any]:
  row = {"dataset": name, "checkpoint": checkpoint, **report.to_dict(),
         "bad_records_skipped": bad_records}
  del row["name"]
  return row


def main(argv):
  del argv
  cfg = _CONFIG.value
  try:
    names = validate(cfg)                               # before any model is read or compiled
  except ValueError as e:
    raise app.UsageError(str(e)) from None

  import jax
  import jax.numpy as jnp

  from elasticity import compression, sharding
  from elasticity.models import load_pretrained
  from elasticity.tokenizers import load_tokenizer

  sharding.initialize_distributed()
  workdir = Path(_WORKDIR.value).expanduser()
  model_path = cfg.model or str(paths.smollm2_gguf())
  tok_path = cfg.tokenizer or model_path
  dtype = jnp.dtype(cfg.dtype)
  mesh = sharding.mesh_from_config(dict(cfg.mesh))
  datasets = {name: _load_records(name, cfg) for name in names}

  t0 = time.time()
  tok = load_tokenizer(tok_path)
  model = load_pretrained(model_path, dtype=dtype, tokenizer=cfg.tokenizer or None)
  logging.info("loaded checkpoint %s (%s, %d layers, V=%d) in %.1fs; mesh %s", model_path,
               model.config.family, model.config.num_layers, model.config.vocab_size,
               time.time() - t0, dict(mesh.shape))
  scorer = compression.Scorer(model, mesh=mesh, chunk_size=cfg.chunk_size)
  kw = dict(max_length=cfg.max_length, batch_size=cfg.batch_size, template=cfg.template,
            add_bos=cfg.add_bos, add_eos=cfg.add_eos, packing=cfg.packing,
            padding_side=cfg.padding_side, progress=cfg.progress and jax.process_index() == 0)

  checkpoints = [("model", model_path)] + ([("baseline", cfg.baseline)] if cfg.baseline else [])
  reports: dict[tuple[str, str], Any] = {}
  for role, path in checkpoints:
    if role == "baseline":
      base = load_pretrained(path, dtype=dtype, tokenizer=cfg.tokenizer or None)
      try:
        scorer.update(base)                             # same architecture: no recompilation
      except ValueError:
        scorer = compression.Scorer(base, mesh=mesh, chunk_size=cfg.chunk_size)
    for name, (records, _) in datasets.items():
      rep = compression.measure(scorer, tok, records, name=name, **kw)
      reports[(name, role)] = rep
      logging.info("%s [%s]: %.4f bits/token, %.4f bits/byte, normalized %.4f (%d examples, "
                   "%d tokens, %d bytes, %d skipped)", name, role, rep.bits_per_token,
                   rep.bits_per_byte, rep.normalized, rep.examples, rep.tokens, rep.bytes,
                   rep.skipped)

  rows = [_row(name, role, reports[(name, role)], datasets[name][1])
          for role, _ in checkpoints for name in names]
  deltas = [{"dataset": name, **{k: v for k, v in reports[(name, "model")].delta(
      reports[(name, "baseline")]).to_dict().items() if k != "name"}} for name in names
  ] if cfg.baseline else []
  if jax.process_index() == 0:
    write_results(workdir, cfg, rows, deltas, {role: path for role, path in checkpoints})
  logging.info("results in %s", workdir)


def write_results(workdir: Path, cfg, rows: list[dict], deltas: list[dict],
                  checkpoints: dict[str, str]) -> None:
  """results.json (config, checkpoints, rows, deltas), results.csv (rows), results.md (tables)."""
  from elasticity import report
  report.write_json(workdir / "results.json", {
      "checkpoints": checkpoints, "config": cfg.to_dict(), "results": rows, "deltas": deltas})
  report.write_csv(workdir / "results.csv", rows)
  cols = ("dataset", "checkpoint", "examples", "tokens", "bytes", "nats_per_token",
          "bits_per_token", "bits_per_byte", "normalized", "skipped", "truncated")
  sections = [("Compression rates", "\n".join(
      ["Checkpoints: " + ", ".join(f"{k} = `{v}`" for k, v in checkpoints.items()) + ".",
       f"Template `{cfg.template}`, max_length {cfg.max_length}; normalized = bits/token − log₂ V.",
       "", report.markdown_table([{c: r[c] for c in cols} for r in rows])]))]
  if deltas:
    sections.append(("Δγ (model − baseline)", report.markdown_table(deltas)))
  report.write_markdown(workdir / "results.md", sections)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
