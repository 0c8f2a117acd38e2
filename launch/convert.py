"""Convert a checkpoint between formats: HF directory / .gguf / llama2.c .bin → HF directory or orbax.

    python -m launch.convert --src=model.gguf --dst=out/hf [--dtype=bfloat16]
    python -m launch.convert --src=stories260K.bin --tokenizer=tok512.bin --dst=out/hf
    python -m launch.convert --src=out/hf --dst=out/orbax --to=orbax
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax.numpy as jnp  # noqa: E402
from absl import app, flags, logging  # noqa: E402

_SRC = flags.DEFINE_string("src", None, "Source: HF directory, .gguf file, or llama2.c .bin.", required=True)
_DST = flags.DEFINE_string("dst", None, "Destination directory (written atomically).", required=True)
_TO = flags.DEFINE_enum("to", "hf", ["hf", "orbax"], "Destination format.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                           "Parameter dtype of the output (default: float32).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "llama2.c tokenizer.bin (checked against the vocab).")


def main(argv):
  del argv
  from elasticity.models import load_pretrained, save_pretrained
  dtype = jnp.dtype(_DTYPE.value or "float32")
  model = load_pretrained(_SRC.value, dtype=dtype, tokenizer=_TOKENIZER.value)
  if _TO.value == "hf":
    out = save_pretrained(model, _DST.value)
  else:
    from elasticity.convert.orbax_model import save_orbax
    out = save_orbax(model, _DST.value)
  logging.info("wrote %s (%s, %s)", out, model.config.family, dtype.name)
  print(out)


if __name__ == "__main__":
  app.run(main)
