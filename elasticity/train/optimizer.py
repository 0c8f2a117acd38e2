"""Optimizers and learning-rate schedules from config: AdamW / Adam / SGD, constant / linear / cosine
with linear warmup, and global-norm gradient clipping.

    tx, schedule = make_optimizer(cfg.optimizer, total_steps)

``cfg.optimizer`` keys: ``name`` (adamw | adam | sgd), ``lr``, ``schedule`` (constant | linear |
cosine), ``warmup_steps``, ``end_lr_fraction`` (linear/cosine end value as a fraction of ``lr``),
``weight_decay`` (adamw), ``b1``, ``b2``, ``eps``, ``momentum`` (sgd), ``clip_norm`` (0 = off).
The schedule is a function of the optimizer-update count (microbatches do not advance it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import optax

NAMES = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "linear", "cosine")
KEYS = ("name", "lr", "schedule", "warmup_steps", "end_lr_fraction", "weight_decay", "b1", "b2", "eps",
        "momentum", "clip_norm")


def make_schedule(lr: float, schedule: str, warmup_steps: int, total_steps: int,
                  end_lr_fraction: float = 0.0) -> Callable[[Any], Any]:
  """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then constant / linear / cosine decay."""
  if schedule not in SCHEDULES:
    raise ValueError(f"optimizer.schedule: {schedule!r} is not one of {SCHEDULES}")
  if warmup_steps < 0:
    raise ValueError(f"optimizer.warmup_steps: must be >= 0, got {warmup_steps}")
  decay_steps = max(1, total_steps - warmup_steps)
  end = lr * end_lr_fraction
  if schedule == "constant":
    main = optax.constant_schedule(lr)
  elif schedule == "linear":
    main = optax.linear_schedule(lr, end, decay_steps)
  else:
    main = optax.cosine_decay_schedule(lr, decay_steps, alpha=end_lr_fraction)
  if warmup_steps == 0:
    return main
  warm = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warm, main], [warmup_steps])


def make_optimizer(cfg: Mapping[str, Any], total_steps: int
                   ) -> tuple[optax.GradientTransformation, Callable[[Any], Any]]:
  """``(tx, schedule)`` from an optimizer config section (see the module docstring)."""
  unknown = sorted(set(cfg) - set(KEYS))
  if unknown:
    raise ValueError(f"optimizer: unknown key(s) {unknown}; known: {sorted(KEYS)}")
  name = cfg.get("name", "adamw")
  if name not in NAMES:
    raise ValueError(f"optimizer.name: {name!r} is not one of {NAMES}")
  lr = float(cfg.get("lr", 1e-5))
  schedule = make_schedule(lr, cfg.get("schedule", "constant"), int(cfg.get("warmup_steps", 0)),
                           total_steps, float(cfg.get("end_lr_fraction", 0.0)))
  b1, b2, eps = float(cfg.get("b1", 0.9)), float(cfg.get("b2", 0.999)), float(cfg.get("eps", 1e-8))
  if name == "adamw":
    opt = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=float(cfg.get("weight_decay", 0.0)))
  elif name == "adam":
    opt = optax.adam(schedule, b1=b1, b2=b2, eps=eps)
  else:
    momentum = float(cfg.get("momentum", 0.0))
    opt = optax.sgd(schedule, momentum=momentum or None)
  clip = float(cfg.get("clip_norm", 0.0))
  if clip < 0:
    raise ValueError(f"optimizer.clip_norm: must be >= 0, got {clip}")
  tx = optax.chain(optax.clip_by_global_norm(clip), opt) if clip > 0 else opt
  return tx, schedule
