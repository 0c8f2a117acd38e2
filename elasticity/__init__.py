"""elasticity: a JAX-native reproduction of "Language Models Resist Alignment" (Ji et al., ACL 2025).

The package is importable without side effects: no flags, no I/O, no device initialisation at import.
Sub-packages: ``models`` (Flax NNX ports), ``convert`` (checkpoint import/export), ``data`` (datasets,
prompt formats, packing), ``compression`` (the compression-rate kernel), ``sharding`` and ``train``.
"""

__version__ = "0.1.0"
