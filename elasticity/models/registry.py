"""Hugging Face ``model_type`` → family module; builds a `CausalLM` from a config.

To add a family: write ``elasticity/models/<family>.py`` with ``MODEL_TYPES``, ``config_from_hf`` and
``config_to_hf`` (translating its quirks into `ModelConfig` switches) and list it in ``FAMILIES``.
"""

from __future__ import annotations

import functools
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from elasticity.models import gemma, llama, qwen2
from elasticity.models.config import ModelConfig
from elasticity.models.transformer import CausalLM

FAMILIES: tuple[ModuleType, ...] = (llama, qwen2, gemma)
_BY_TYPE = {t: m for m in FAMILIES for t in m.MODEL_TYPES}
_BY_FAMILY = {"llama": llama, "qwen2": qwen2, "gemma": gemma, "gemma2": gemma, "gemma3": gemma}


def supported_model_types() -> tuple[str, ...]:
  return tuple(sorted(_BY_TYPE))


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
  """A `ModelConfig` from a Hugging Face config dictionary (``config.json`` contents)."""
  model_type = d.get("model_type")
  if model_type not in _BY_TYPE:
    raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(supported_model_types())}")
  return _BY_TYPE[model_type].config_from_hf(d)


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  """The ``config.json`` dictionary (transformers 5 layout) of a `ModelConfig`."""
  return _BY_FAMILY[cfg.family].config_to_hf(cfg)


def create_model(cfg: ModelConfig, *, dtype=jnp.float32, param_dtype=None, seed: int = 0,
                 scan_layers: bool = False, attention_impl: str = "xla") -> CausalLM:
  """A randomly initialised model (normal(0.02) weights; the same in both layer layouts)."""
  return CausalLM(cfg, dtype=dtype, param_dtype=param_dtype or dtype, rngs=nnx.Rngs(seed),
                  scan_layers=scan_layers, attention_impl=attention_impl)


def abstract_model(cfg: ModelConfig, *, dtype=jnp.float32, param_dtype=None,
                   scan_layers: bool = False, attention_impl: str = "xla") -> CausalLM:
  """The model with `jax.ShapeDtypeStruct` leaves: no memory allocated (for shapes, counts, shardings).

  Its split (structure and abstract leaves, both immutable) is cached per config and dtypes; each
  call merges a fresh module from it. The same graphdef and state as ``nnx.eval_shape`` of
  `create_model`, without an `nnx.Rngs` in the trace (see `_ShapeOnlyRngs`).
  """
  graphdef, state = _abstract_parts(cfg, jnp.dtype(dtype), jnp.dtype(param_dtype or dtype),
                                    bool(scan_layers), str(attention_impl))
  return nnx.merge(graphdef, state)


class _ShapeOnlyRngs:
  """Stands in for `nnx.Rngs` while the constructor is traced for shapes: every stream returns the
  same key and no counter is kept. An `nnx.Rngs` under trace updates its counter `Variable` on each
  draw, and each update makes JAX build an error-message string for the tracer's missing
  ``sharding`` (`DynamicJaxprTracer._origin_msg`): 2.6 of the 2.9 s that tracing SmolLM2's 30 layers
  took. The values are never computed, so one key for all draws changes no shape or dtype. Safe
  because no module keeps its ``rngs`` (a kept one would show up in the graphdef; the tests compare
  it with ``nnx.eval_shape`` of the real constructor for every family).
  """

  def __init__(self):
    self._key = jax.random.key(0)

  def __call__(self) -> jax.Array:
    return self._key

  def __getattr__(self, stream: str):
    if stream.startswith("_"):
      raise AttributeError(stream)
    return self


@functools.lru_cache(maxsize=32)
def _abstract_parts(cfg: ModelConfig, dtype, param_dtype, scan_layers: bool, attention_impl: str):
  return nnx.split(nnx.eval_shape(lambda: CausalLM(cfg, dtype=dtype, param_dtype=param_dtype,
                                                   rngs=_ShapeOnlyRngs(), scan_layers=scan_layers,
                                                   attention_impl=attention_impl)))
