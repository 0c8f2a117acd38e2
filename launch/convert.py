"""Convert a checkpoint between formats: HF directory / .gguf / llama2.c .bin → HF directory or orbax.

An HF export carries the source's tokenizer (``--tokenizer``, else the one in or at ``--src``) when
there is one, so `load_tokenizer(dst)` works on it.

    python -m launch.convert --src=model.gguf --dst=out/hf [--dtype=bfloat16]
    python -m launch.convert --src=stories260K.bin --tokenizer=tok512.bin --dst=out/hf
    python -m launch.convert --src=out/hf --dst=out/orbax --to=orbax

``--dst`` must be new or empty, or an earlier export of ours (it carries `elasticity.atomic.MARKER`);
``--overwrite`` replaces any other folder, except a training run's workdir, which is never replaced.
"""

from __future__ import annotations

import jax.numpy as jnp
from absl import flags, logging

from elasticity import atomic
from elasticity.convert import load_pretrained, save_pretrained
from elasticity.convert.orbax_model import save_orbax
from elasticity.tokenizers import load_tokenizer
from launch import app

_SRC = flags.DEFINE_string("src", None, "Source: HF directory, .gguf file, or llama2.c .bin.", required=True)
_DST = flags.DEFINE_string("dst", None, "Destination directory (written atomically).", required=True)
_TO = flags.DEFINE_enum("to", "hf", ["hf", "orbax"], "Destination format.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                           "Parameter dtype of the output (default: float32).")
_TOKENIZER = flags.DEFINE_string("tokenizer", None, "llama2.c tokenizer.bin (checked against the vocab).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --dst folder that holds files "
                               "this command did not write (never a training run's workdir).")


def _source_tokenizer():
  """The source's tokenizer (--tokenizer, else the source itself), or None if it has none."""
  path = _TOKENIZER.value or _SRC.value
  if not _TOKENIZER.value and _SRC.value.endswith(".bin"):   # a llama2.c checkpoint, not a tokenizer
    logging.warning("no --tokenizer for the llama2.c checkpoint: the export holds the model only")
    return None
  try:
    return load_tokenizer(path)
  except (ValueError, OSError) as e:
    logging.warning("no tokenizer found with %s (%s): the export holds the model only", path, e)
    return None


def main(argv):
  del argv
  atomic.check_replaceable(_DST.value, overwrite=_OVERWRITE.value)   # before anything is loaded
  dtype = jnp.dtype(_DTYPE.value or "float32")
  model = load_pretrained(_SRC.value, dtype=dtype, tokenizer=_TOKENIZER.value)
  if _TO.value == "hf":
    out = save_pretrained(model, _DST.value, tokenizer=_source_tokenizer(), overwrite=_OVERWRITE.value)
  else:
    out = save_orbax(model, _DST.value, overwrite=_OVERWRITE.value)
  logging.info("wrote %s (%s, %s)", out, model.config.family, dtype.name)
  print(out)


if __name__ == "__main__":
  app.run(main, orbax=False)
