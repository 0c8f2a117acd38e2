"""Datasets for the elasticity experiments: loading, subsets, prompt formats, SFT masks, packing.

Typical use::

  from elasticity import data
  recs = data.load_dataset("imdb", split="train", label="pos", prompt_len=8)
  recs = data.take(recs, 2000, seed=42)
  toks = data.tokenize(recs, tokenizer, template="plain", max_length=512)
  for batch in data.batches(toks, batch_size=8, max_length=512, pack=True): ...

Modules: ``registry`` (names -> loaders), ``builtin``/``imdb`` (the datasets), ``sources`` (file,
Hugging Face and TFDS readers), ``records`` (schemas and checks), ``errors``, ``subsets``,
``formats``, ``tokenize``, ``labelled`` (KTO: labelled completions, unpairing, KL partners),
``packing``, ``batches``.
"""

from elasticity.data import builtin, imdb  # noqa: F401  (the built-in loaders register their names)
from elasticity.data.batches import batches, labelled_batches, preference_batches
from elasticity.data.errors import DataError
from elasticity.data.formats import TEMPLATES, Formatted, alpaca_prompt, format_example
from elasticity.data.imdb import split_prompt
from elasticity.data.labelled import (LabelledDataset, LabelledExample, read_label,
                                      tokenize_labelled, unpair)
from elasticity.data.packing import bucket_order, pack, pad_batch, plan_rows
from elasticity.data.records import KINDS, Records, utf8_bytes
from elasticity.data.registry import available, load_dataset, register
from elasticity.data.subsets import order, parse_counts, split_disjoint, take, take_indices
from elasticity.data.tokenize import (POLICIES, PreferencePair, TokenizedDataset, TokenizedExample,
                                      TokenizeReport, tokenize, tokenize_preference)

__all__ = [
    "DataError", "Formatted", "KINDS", "LabelledDataset", "LabelledExample", "POLICIES",
    "PreferencePair", "Records", "TEMPLATES", "TokenizeReport", "TokenizedDataset",
    "TokenizedExample", "alpaca_prompt", "available", "batches", "bucket_order", "format_example",
    "labelled_batches", "load_dataset", "order", "pack", "pad_batch", "parse_counts", "plan_rows",
    "preference_batches", "read_label", "register", "split_disjoint", "split_prompt", "take",
    "take_indices", "tokenize", "tokenize_labelled", "tokenize_preference", "unpair", "utf8_bytes",
]
