"""Datasets for the elasticity experiments: named loaders over local files, HF and TFDS."""

from elasticity.data.errors import DataError
from elasticity.data.imdb import split_prompt
from elasticity.data.records import KINDS, Records, utf8_bytes
from elasticity.data.registry import available, load_dataset, register

__all__ = ["DataError", "KINDS", "Records", "available", "load_dataset", "register",
           "split_prompt", "utf8_bytes"]
