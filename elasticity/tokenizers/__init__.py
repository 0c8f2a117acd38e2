"""One small tokenizer interface for the whole project, and loaders for every format it reads.

Everything that turns text into ids (data pipelines, the compression kernel, generation) talks to the
``Tokenizer`` protocol below, never to ``transformers``/``sentencepiece``/``tiktoken`` directly.
``load_tokenizer(path)`` picks the implementation from the path:

* a Hugging Face folder (``tokenizer.json``/``tokenizer_config.json``) -> ``HFTokenizer``
* a ``.gguf`` file -> ``HFTokenizer`` (``AutoTokenizer.from_pretrained(folder, gguf_file=name)``)
* a SentencePiece ``.model`` file -> ``SentencePieceTokenizer`` (ids identical to ``sentencepiece``)
* a llama2.c ``tokenizer.bin`` (``.bin``) -> ``Llama2cTokenizer`` (a port of llama2.c's ``encode``)
* a ``.tiktoken`` ranks file (Llama 3 or Qwen v1) or GPT-2's ``encoder.json`` + ``vocab.bpe`` ->
  ``TiktokenTokenizer``

Conventions shared by all implementations: ``encode`` never adds BOS/EOS unless asked
(``add_bos=True``); special-token strings written in the text (e.g. a chat template's
``<|im_start|>``) are encoded as the special tokens, as Hugging Face tokenizers do; ``pad_id`` falls
back to ``eos_id`` and then to 0; ``add_bos_token`` says whether the model's sequences conventionally
start with BOS (Llama 1/2/3: yes; GPT-2, Qwen, SmolLM2: no). ``save(out_dir)`` writes files that
``load_tokenizer(out_dir)`` reads back as the same tokenizer (model exports carry their tokenizer).

Where users hand in a tokenizer (`compression.measure`, `elasticity.data.tokenize`, ...), ``as_tokenizer``
accepts a ``transformers`` tokenizer too (``AutoTokenizer.from_pretrained(...)``), wrapped in
``HFTokenizer``.
"""

from __future__ import annotations

from elasticity.tokenizers.base import Tokenizer
from elasticity.tokenizers.hf import HFTokenizer
from elasticity.tokenizers.llama2c import Llama2cTokenizer
from elasticity.tokenizers.load import as_tokenizer, load_tokenizer
from elasticity.tokenizers.sentencepiece import SentencePieceTokenizer
from elasticity.tokenizers.tiktoken import TiktokenTokenizer

__all__ = [
    "Tokenizer",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Llama2cTokenizer",
    "TiktokenTokenizer",
    "load_tokenizer",
    "as_tokenizer",
]
