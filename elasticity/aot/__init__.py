"""Ahead-of-time compilation for TPU pod slices from a CPU host: topologies, abstract programs, memory.

`topologies` turns the accelerator names users type (``v5p-64``, ``v5e-16x2``) into JAX's abstract TPU
devices (`jax.experimental.topologies`, which needs ``libtpu`` installed: ``pip install -e '.[aot]'``)
and knows each chip's HBM and peak FLOP rate; `programs` builds the project's own train step, compression
kernel, generation loop and KL evaluator on those devices from shapes alone (no weights, no data) and
compiles them; `memory` reads the executable's per-chip memory and says whether it fits.
"""
