"""A compression-rate job: a model (and optionally a baseline) measured on named datasets, Δγ, results.

    from elasticity.compression import job
    names = job.validate(cfg, defaults)     # ValueError naming the key; nothing loaded yet
    result = job.run(cfg)                   # JobResult: reports, rows, deltas
    job.write_results(workdir, cfg, result) # results.json / .csv, atomically

``cfg`` has the keys of ``configs/compress.py``; ``defaults`` is that file's ``get_config()``, the
reference for unknown keys, handed in by the caller (the library does not read ``configs/``).
`python -m launch.compress` is a thin absl app over this module that also writes ``results.md``;
evaluators call it directly. The numbers come from
`elasticity.compression.measure` (bits/token, bits/byte, normalized γ); Δγ = model − baseline on
the same records (`CompressionReport.delta`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from absl import logging

from elasticity import data, paths, report, sharding
from elasticity.compression.measure import measure
from elasticity.compression.scorer import Scorer
from elasticity.convert import load_pretrained
from elasticity.tokenizers import load_tokenizer

CHOICES = {"template": ("plain", "alpaca", "chat"), "on_error": ("raise", "skip"),
           "padding_side": ("right", "left"), "dtype": ("float32", "bfloat16", "float16")}
POSITIVE = ("max_length", "batch_size", "chunk_size")


def flat_keys(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """``{"mesh": {"data": -1}}`` → ``{"mesh.data": -1}`` (every leaf key of a config)."""
  out = {}
  for k, v in cfg.items():
    if hasattr(v, "items"):
      out.update(flat_keys(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def dataset_names(cfg) -> list[str]:
  return [d.strip() for d in str(cfg.datasets).split(",") if d.strip()]


def validate(cfg, defaults: Mapping[str, Any]) -> list[str]:
  """Raise ``ValueError`` naming the first bad key of ``cfg``; return the dataset names.

  ``defaults`` is the complete config (``configs/compress.py``'s ``get_config()``): a key it lacks
  is unknown. Checks values, dataset names and that the named files exist — nothing is loaded.
  """
  known = flat_keys(defaults)
  for key in flat_keys(cfg):
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
  names = dataset_names(cfg)
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


def load_records(name: str, cfg) -> tuple[list[dict], int]:
  """``(records, bad records skipped)`` of dataset ``name`` (``data_dir``, ``split``, ``limit``)."""
  kw = {}
  if cfg.data_dir:
    kw["data_dir"] = Path(cfg.data_dir).expanduser() / name
  records = data.load_dataset(name, cfg.split or None, on_error=cfg.on_error, **kw)
  n_bad = getattr(records, "n_skipped", 0)
  if cfg.limit:
    records = records[:cfg.limit]
  return records, n_bad


@dataclasses.dataclass
class JobResult:
  """What `run` measured: ``reports[(dataset, role)]`` with role "model" or "baseline"."""
  checkpoints: dict[str, str]
  reports: dict[tuple[str, str], Any]
  rows: list[dict[str, Any]]
  deltas: list[dict[str, Any]]


def _row(name: str, role: str, report, bad_records: int) -> dict[str, Any]:
  row = {"dataset": name, "checkpoint": role, **report.to_dict(), "bad_records_skipped": bad_records}
  del row["name"]
  return row


def run(cfg, names: list[str] | None = None) -> JobResult:
  """Measure the model (and the baseline, if ``cfg.baseline``) on every dataset; rows and Δγ.

  The baseline is scored by the same compiled functions when its structure matches the model's.
  Every process of a multi-host job calls this (the scorer's batches span them).
  """
  names = dataset_names(cfg) if names is None else names
  model_path = cfg.model or str(paths.smollm2_gguf())
  dtype = jnp.dtype(cfg.dtype)
  mesh = sharding.mesh_from_config(dict(cfg.mesh))
  datasets = {name: load_records(name, cfg) for name in names}

  t0 = time.time()
  tok = load_tokenizer(cfg.tokenizer or model_path)
  model = load_pretrained(model_path, dtype=dtype, tokenizer=cfg.tokenizer or None)
  logging.info("loaded checkpoint %s (%s, %d layers, V=%d) in %.1fs; mesh %s", model_path,
               model.config.family, model.config.num_layers, model.config.vocab_size,
               time.time() - t0, dict(mesh.shape))
  scorer = Scorer(model, mesh=mesh, chunk_size=cfg.chunk_size)
  kw = dict(max_length=cfg.max_length, batch_size=cfg.batch_size, template=cfg.template,
            add_bos=cfg.add_bos, add_eos=cfg.add_eos, packing=cfg.packing,
            padding_side=cfg.padding_side, progress=cfg.progress and jax.process_index() == 0)

  checkpoints = {"model": model_path, **({"baseline": cfg.baseline} if cfg.baseline else {})}
  reports: dict[tuple[str, str], Any] = {}
  for role, path in checkpoints.items():
    if role == "baseline":
      base = load_pretrained(path, dtype=dtype, tokenizer=cfg.tokenizer or None)
      scorer = Scorer.reuse(scorer, base, mesh=mesh, chunk_size=cfg.chunk_size)
    for name, (records, _) in datasets.items():
      rep = measure(scorer, tok, records, name=name, **kw)
      reports[(name, role)] = rep
      logging.info("%s [%s]: %.4f bits/token, %.4f bits/byte, normalized %.4f (%d examples, "
                   "%d tokens, %d bytes, %d skipped)", name, role, rep.bits_per_token,
                   rep.bits_per_byte, rep.normalized, rep.examples, rep.tokens, rep.bytes,
                   rep.skipped)

  rows = [_row(name, role, reports[(name, role)], datasets[name][1])
          for role in checkpoints for name in names]
  deltas = [{"dataset": name, **{k: v for k, v in reports[(name, "model")].delta(
      reports[(name, "baseline")]).to_dict().items() if k != "name"}} for name in names
  ] if cfg.baseline else []
  return JobResult(checkpoints, reports, rows, deltas)


def write_results(workdir: str | Path, cfg, result: JobResult) -> None:
  """results.json (config, checkpoints, rows, deltas) and results.csv (rows), each atomically
  (`elasticity.report`); the launcher adds results.md. Call it on process 0 only."""
  workdir = Path(workdir).expanduser()
  report.write_json(workdir / "results.json", {
      "checkpoints": result.checkpoints, "config": cfg.to_dict(), "results": result.rows,
      "deltas": result.deltas})
  report.write_csv(workdir / "results.csv", result.rows)
