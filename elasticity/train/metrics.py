"""Where a run's metrics go: one JSON line per record in ``metrics.jsonl`` and TensorBoard scalars.

Only process 0 writes. Records are flushed as written, so a killed run keeps every line it logged;
a resumed run appends. TensorBoard uses ``tensorboardX`` (no TensorFlow needed) when installed and is
skipped with one warning otherwise. Also here: the FLOP count of a training token and the peak
FLOP/s of known accelerators, for the MFU estimate of the progress line, and `StepLog`, which
consumes each step's metrics (the log, the progress line every ``train.log_every`` steps, the
``on_step`` callback) and raises `NonFiniteLossError` at a non-finite step.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
from absl import logging

# Dense bf16 peak FLOP/s per device, by jax `device_kind` prefix (vendor data sheets).
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
}


def peak_flops_per_device(override: float = 0.0) -> float | None:
  """Peak FLOP/s of one local device (``override`` wins); None when unknown (CPU)."""
  if override and override > 0:
    return float(override)
  kind = jax.local_devices()[0].device_kind
  for prefix, flops in sorted(PEAK_FLOPS.items(), key=lambda kv: -len(kv[0])):
    if kind.startswith(prefix):
      return flops
  return None


def train_flops_per_token(n_params: int, num_layers: int, hidden: int, seq_len: int) -> float:
  """6·N for the matmuls (forward + backward) plus 12·L·D·T for attention scores (PaLM appendix B)."""
  return 6.0 * n_params + 12.0 * num_layers * hidden * seq_len


class MetricWriter:
  """Append scalars to ``<dir>/metrics.jsonl`` and TensorBoard event files under ``<dir>/tb``."""

  def __init__(self, directory: str | os.PathLike, *, tensorboard: bool = True):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(os.fspath(directory), "metrics.jsonl")
    self._file = None
    self._tb = None
    if not self.enabled:
      return
    os.makedirs(os.fspath(directory), exist_ok=True)
    self._file = open(self.path, "a", encoding="utf-8")
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # optional (OPTIONAL in tests/test_layering.py)
        self._tb = SummaryWriter(os.path.join(os.fspath(directory), "tb"))
      except ImportError:
        logging.warning("tensorboardX is not installed: TensorBoard logging is off "
                        "(pip install tensorboardX); metrics still go to %s", self.path)

  def write(self, step: int, scalars: Mapping[str, Any], *, kind: str = "train") -> None:
    if not self.enabled:
      return
    clean = {}
    for k, v in scalars.items():
      v = float(v) if not isinstance(v, (str, bool)) else v
      clean[k] = v
    self._file.write(json.dumps({"kind": kind, "step": int(step), **clean}, sort_keys=True) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in clean.items():
        if isinstance(v, float) and math.isfinite(v):
          self._tb.add_scalar(f"{kind}/{k}", v, int(step))
      self._tb.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_jsonl(path: str | os.PathLike, kind: str | None = "train") -> list[dict[str, Any]]:
  """The records of a ``metrics.jsonl`` (of one ``kind``), in file order."""
  out = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {n}: invalid JSON ({e})") from None
      if kind is None or rec.get("kind") == kind:
        out.append(rec)
  return out


def hms(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class NonFiniteLossError(FloatingPointError):
  """The loss (or gradient norm) of a step was NaN or infinite; the run stopped at that step."""

  def __init__(self, step: int, loss: float, grad_norm: float, last_checkpoint: int | None,
               directory: str):
    self.step, self.last_checkpoint = step, last_checkpoint
    where = (f"the last good checkpoint is step {last_checkpoint} in {directory}"
             if last_checkpoint is not None else f"no checkpoint was written yet in {directory}")
    super().__init__(f"step {step}: non-finite loss {loss} (grad norm {grad_norm}); the update was "
                     f"not applied and the run stopped; {where}")


class StepLog:
  """Consumes each step's metrics: ``metrics.jsonl``/TensorBoard, the progress line, ``on_step``.

  ``ckpt`` is the run's `elasticity.train.checkpoint.Checkpointer`. A non-finite step raises
  `NonFiniteLossError` (after the checkpointer has finished writing).
  """

  def __init__(self, writer: MetricWriter, ckpt, total_steps: int, log_every: int,
               flops_per_token: float, peak: float | None,
               on_step: Callable[[int, int, dict], None] | None):
    self.writer, self.ckpt, self.total_steps, self.log_every = writer, ckpt, total_steps, log_every
    self.flops_per_token, self.peak, self.on_step = flops_per_token, peak, on_step
    self.last: dict[str, float] = {}
    self.window = {"t": time.perf_counter(), "tokens": 0, "steps": 0}

  def __call__(self, entry: tuple[int, Any, int]) -> None:
    s, m, ntok = entry
    m = {k: float(v) for k, v in jax.device_get(m).items()}
    if not m.pop("finite"):
      self.ckpt.wait()
      self.writer.write(s, m)
      raise NonFiniteLossError(s, m["loss"], m["grad_norm"], self.ckpt.latest_step(),
                               self.ckpt.directory)
    self.writer.write(s, {**m, "tokens": ntok})
    self.last = m
    if self.on_step is not None:
      self.on_step(s, self.total_steps, {**m, "tokens": ntok})
    w = self.window
    w["tokens"] += ntok
    w["steps"] += 1
    if s % self.log_every == 0 or s == self.total_steps:
      now = time.perf_counter()
      dt = max(now - w["t"], 1e-9)
      tps = w["tokens"] / dt
      step_time = dt / max(w["steps"], 1)
      mfu = (self.flops_per_token * tps / (self.peak * jax.device_count())) if self.peak else None
      eta = (self.total_steps - s) * step_time
      logging.info("step %d/%d  loss %.4f  tokens/s %.0f  MFU %s  ETA %s", s, self.total_steps,
                   m["loss"], tps, f"{100 * mfu:.1f}%" if mfu is not None else "n/a", hms(eta))
      self.writer.write(s, {"tokens_per_s": tps, "step_time_s": step_time,
                            **({"mfu": mfu} if mfu is not None else {})}, kind="perf")
      w.update(t=now, tokens=0, steps=0)
