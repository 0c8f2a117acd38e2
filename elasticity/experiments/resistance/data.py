"""The resistance experiment's data files: the held-out set, and each seed's m·n training records
(and m·n generation prompts of the generated design), from one dataset's records that fit.
"""

from __future__ import annotations

from elasticity.data import load_dataset
from elasticity.data.formats import format_example
from elasticity.data.subsets import order
from elasticity.experiments.core.sizes import DataSizeError
from elasticity.experiments.resistance.grid import (heldout_file, num_checkpoints, prompts_file,
                                                    train_file)


def _source_records(c, tokenizer) -> list[dict]:
  """The dataset's records as ``{"prompt", "response"}`` (prompt formatted by ``data.template``), in
  source order, keeping only those whose formatted text fits ``data.max_length`` whole."""
  records = load_dataset(c.dataset, None, **c.data.load_kwargs.to_dict())
  out = []
  limit = int(c.data.max_length) - 2          # BOS and EOS
  for i, r in enumerate(records):
    f = format_example(r, c.data.template, tokenizer, position=i)
    prompt, response = f.prompt, f.response
    if len(tokenizer.encode(prompt + response)) <= limit:
      out.append({"prompt": prompt, "response": response})
  return out


def build_files(c, tokenizer) -> dict:
  """The records of every data file (module docstring): the held-out set is the last ``heldout``
  fitting records in source order; each seed's m·n training records (and m·n generation prompts)
  come from the rest in the seed's order."""
  recs = _source_records(c, tokenizer)
  n, h, m = int(c.n), int(c.heldout), num_checkpoints(c)
  need = m * n * (2 if c.dk == "generated" else 1)
  if len(recs) < need + h:
    raise DataSizeError(f"preset {c.variant or c.model.name!r}: dataset {c.dataset}: {need + h} "
                        f"records that fit max_length {c.data.max_length} needed ({m}·n={m * n} "
                        f"training" + (f" + {m * n} generation prompts" if c.dk == "generated" else "")
                        + f" + {h} held-out), {len(recs)} available (config.n, config.m, "
                        f"config.heldout or config.data.max_length)")
  heldout, pool = recs[len(recs) - h:], recs[:len(recs) - h]
  files = {heldout_file(c): heldout}
  for seed in (int(s) for s in c.seeds):
    idx = order(len(pool), seed)
    files[train_file(c, seed)] = [pool[int(i)] for i in idx[:m * n]]
    if c.dk == "generated":
      files[prompts_file(c, seed)] = [pool[int(i)] for i in idx[m * n:2 * m * n]]
  return files
