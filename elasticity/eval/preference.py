"""The compression score: a model's preference between two sets of responses, measured as code length.

    Δγ = bits/byte(negative responses) − bits/byte(positive responses)

under the model, from `elasticity.compression.measure` on held-out ``{"prompt", "response"}`` records
(e.g. IMDb test reviews: the first tokens as prompt, the rest as response). Δγ > 0: the model codes
positive text more cheaply than negative text, i.e. it prefers it; a rebound toward the negative
data shows as Δγ falling. It needs no classifier, and bits/byte is comparable across tokenizers.
Both sets are scored by one `compression.Scorer` (one compilation per batch shape for both; pass a
Scorer to reuse it across evaluation points, with ``Scorer.update(model)`` for new weights).

    from elasticity.eval import preference
    preference.compression_preference(model, tokenizer, pos_records, neg_records, max_length=128,
                                      batch_size=8)
    # {"delta_gamma": ..., "bpb_pos": ..., "bpb_neg": ..., "bpt_pos": ..., ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from elasticity import compression
from elasticity.models.transformer import CausalLM


def _records(name: str, records: Any) -> list:
  if isinstance(records, (str, bytes)) or not isinstance(records, Sequence):
    raise TypeError(f"compression_preference: {name} must be a list of {{'prompt', 'response'}} "
                    f"records, got {type(records).__name__}")
  if not records:
    raise ValueError(f"compression_preference: {name} has no records")
  return list(records)


def compression_preference(model_or_scorer: CausalLM | compression.Scorer, tokenizer: Any,
                           positive: Sequence[dict], negative: Sequence[dict], *, max_length: int,
                           batch_size: int, template: str = "plain", add_bos: bool | None = None,
                           trim_last: bool = False) -> dict[str, Any]:
  """Δγ = bits/byte of ``negative`` − bits/byte of ``positive`` responses, with both rates and counts.

  Returns a flat dict (a results row): ``delta_gamma`` (bits/byte), ``delta_gamma_per_token``
  (bits/token, tokenizer-dependent), and per side (``_pos``, ``_neg``): ``bpb`` bits/byte, ``bpt``
  bits/token, ``bits``, ``tokens``, ``bytes``, ``examples``, ``skipped`` (responses longer than
  ``max_length``) and ``truncated`` (prompts cut from the left). Record errors name the file, record
  and field (`elasticity.compression.measure`).
  ``trim_last``: each side's last, partial batch without empty rows (`compression.measure`), for a
  reused Scorer.
  """
  positive = _records("positive", positive)
  negative = _records("negative", negative)
  scorer = (model_or_scorer if isinstance(model_or_scorer, compression.Scorer)
            else compression.Scorer(model_or_scorer))
  out: dict[str, Any] = {}
  for side, name, records in (("pos", "positive", positive), ("neg", "negative", negative)):
    rep = compression.measure(scorer, tokenizer, records, max_length=max_length,
                              batch_size=batch_size, template=template, add_bos=add_bos, name=name,
                              trim_last=trim_last)
    if rep.examples == 0:
      raise ValueError(f"compression_preference: none of the {len(records)} {name} records fits "
                       f"in max_length={max_length} ({rep.skipped} skipped): raise max_length")
    out.update({f"bpb_{side}": rep.bits_per_byte, f"bpt_{side}": rep.bits_per_token,
                f"bits_{side}": rep.bits, f"tokens_{side}": rep.tokens, f"bytes_{side}": rep.bytes,
                f"examples_{side}": rep.examples, f"skipped_{side}": rep.skipped,
                f"truncated_{side}": rep.truncated})
  out["delta_gamma"] = out["bpb_neg"] - out["bpb_pos"]
  out["delta_gamma_per_token"] = out["bpt_neg"] - out["bpt_pos"]
  return out


__all__ = ["compression_preference"]
