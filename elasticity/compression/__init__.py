"""Compression rate γ: the code length a model assigns to a dataset's responses, per token and per byte.

Definitions (paper §3; docs/PAPER.md). For a model p_θ and a dataset D of (prompt x, response y) records,

    bits(θ, D)        = Σ_{(x, y) ∈ D} Σ_{response tokens y_t} −log₂ p_θ(y_t | x, y_<t)
    bits/token        = bits(θ, D) / number of response tokens scored
    bits/byte         = bits(θ, D) / number of UTF-8 bytes of the responses (tokenizer-independent)
    nats/token        = bits/token · ln 2
    normalized        = γ^{D_i/D} = bits/token − log₂ V

``normalized`` is the paper's γ − log M: M is the number of leaves of the token tree pruned to the
model's depth, here the model's output vocabulary (V = ``model.config.vocab_size``), and log₂ V is the
code length of the uniform code over those leaves, the rate of a model that knows nothing beyond the
tree's support. A model better than uniform has normalized < 0; comparing datasets of different
entropy, or one dataset across checkpoints, uses it. Δγ between two checkpoints on the same data is
``after.delta(before)`` (each rate of ``after`` minus that of ``before``).

Aggregation is sums and counts only: the jitted kernel (`code_lengths`) returns per-example sums of
bits and token counts; the host adds them (float64) across batches, and every rate is one division at
the end. Across devices the kernel's outputs are gathered whole (replicated), so every host sees the
global sums; reports merge with ``a.merge(b)``.

Which tokens: records are tokenized by `elasticity.data.tokenize` (joint encoding of ``prompt +
response``, BOS when the tokenizer adds one; the response tokens are the loss-masked ones), with the
prompt cut from the left when a record exceeds ``max_length``; a record whose response alone does
not fit is skipped and counted, never half-scored (`elasticity.compression.batches`).

Memory and work: the final projection and log-softmax run only on the scored (response) positions,
gathered per batch shard, in chunks (`elasticity.logprobs.chunked_target_logprobs`), so a [B, T, V]
float32 logits tensor is never held whole and prompt or padding positions are never projected.

Sharding: `Scorer` splits the model once (``nnx.split``) and jits a pure function of (params, batch)
once per batch shape under a mesh: the batch over the mesh's batch axes (``data`` × ``fsdp``), the
parameters by their logical axes (`elasticity.sharding` rules; replicated on a pure ``data`` mesh).

    from elasticity.compression import measure
    report = measure(model, tokenizer, examples, max_length=512, batch_size=8, template="plain")
    report.bits_per_token, report.bits_per_byte, report.normalized

Modules: ``report`` (`CompressionReport`, `CompressionDelta`, `normalized_rate`), ``kernel``
(`code_lengths`), ``scorer`` (`Scorer`, `default_mesh`), ``batches`` (`tokenize`, `plan`),
``measure``, ``evaluator`` (a training run's `Evaluator`) and ``job`` (what ``launch.compress`` runs).
"""

from elasticity.compression.batches import Planned, plan, tokenize
from elasticity.compression.evaluator import Evaluator
from elasticity.compression.kernel import code_lengths
from elasticity.compression.measure import measure
from elasticity.compression.report import (LN2, NORMALIZATIONS, CompressionDelta, CompressionReport,
                                           normalized_rate)
from elasticity.compression.scorer import Scorer, default_mesh
from elasticity.data.buckets import length_buckets

__all__ = ["CompressionReport", "CompressionDelta", "Evaluator", "LN2", "NORMALIZATIONS", "Planned",
           "Scorer", "code_lengths", "default_mesh", "length_buckets", "measure", "normalized_rate",
           "plan", "tokenize"]
