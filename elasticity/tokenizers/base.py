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

import heapq
import os
import re
import shutil
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "Tokenizer",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Llama2cTokenizer",
    "TiktokenTokenizer",
    "load_tokenizer",
    "as_tokenizer",
]


@runtime_checkable
class Tokenizer(Protocol):
  """What the project needs from a tokenizer."""

  vocab_size: int
  bos_id: int | None
  eos_id: int | None
  pad_id: int
  add_bos_token: bool

  def save(self, out_dir: str | os.PathLike) -> None:
    """Write the tokenizer's files into ``out_dir`` so that `load_tokenizer(out_dir)` reloads it."""
    ...

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    """Ids of ``text``; BOS first only when ``add_bos`` (and the tokenizer has one)."""
    ...

  def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
    """Text of ``ids``; special tokens dropped when ``skip_special``."""
    ...

  def apply_chat_template(self, messages: list[dict], *,
                          add_generation_prompt: bool) -> str | None:
    """The conversation rendered as text by the tokenizer's own template; None without one."""
    ...

  @property
  def has_chat_template(self) -> bool:
    ...

  @property
  def bos_token(self) -> str | None:
    """The BOS token's text (to tell whether a rendered template already starts with it)."""
    ...


def _pad_fallback(pad_id: int | None, eos_id: int | None) -> int:
  if pad_id is not None:
    return int(pad_id)
  if eos_id is not None:
    return int(eos_id)
  return 0


def _copy_into(out_dir: str | os.PathLike, files: dict[str, Path]) -> None:
  """Copy ``{name in out_dir: source file}``, creating ``out_dir``."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  for name, src in files.items():
    shutil.copyfile(src, out / name)


def _with_bos(ids: list[int], add_bos: bool, bos_id: int | None) -> list[int]:
  if add_bos and bos_id is not None:
    return [bos_id] + ids
  return ids


# --------------------------------------------------------------------------------------------------
# Hugging Face
# --------------------------------------------------------------------------------------------------


class _NoChatTemplate:
  """For tokenizer formats that carry no chat template (llama2.c, SentencePiece, tiktoken files)."""

  @property
  def has_chat_template(self) -> bool:
    return False

  def apply_chat_template(self, messages: list[dict], *,
                          add_generation_prompt: bool) -> str | None:
    del messages, add_generation_prompt
    return None


class HFTokenizer:
  """Wraps a ``transformers`` tokenizer (a folder, a hub snapshot or a GGUF file)."""

  def __init__(self, tok: Any):
    self.hf = tok
    self.vocab_size = len(tok)
    self.bos_id = tok.bos_token_id
    self.eos_id = tok.eos_token_id
    self.pad_id = _pad_fallback(tok.pad_token_id, self.eos_id)
    probe = tok("a", add_special_tokens=True)["input_ids"]
    self.add_bos_token = bool(self.bos_id is not None and probe and probe[0] == self.bos_id)

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike, **kw) -> "HFTokenizer":
    from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
    path = Path(path)
    if path.suffix == ".gguf":
      return cls(AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, **kw))
    return cls(AutoTokenizer.from_pretrained(str(path), **kw))

  def save(self, out_dir: str | os.PathLike) -> None:
    """``save_pretrained``: a Hugging Face tokenizer folder (also for one read from a GGUF file)."""
    self.hf.save_pretrained(str(out_dir))

  @property
  def bos_token(self) -> str | None:
    return self.hf.bos_token

  @property
  def has_chat_template(self) -> bool:
    return bool(getattr(self.hf, "chat_template", None))

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    ids = list(self.hf.encode(text, add_special_tokens=False))
    return _with_bos(ids, add_bos, self.bos_id)

  def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
    return self.hf.decode([int(i) for i in ids], skip_special_tokens=skip_special)

  def apply_chat_template(self, messages: list[dict], *,
                          add_generation_prompt: bool) -> str | None:
    if not self.has_chat_template:
      return None
    return self.hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt)


# --------------------------------------------------------------------------------------------------
# SentencePiece
# --------------------------------------------------------------------------------------------------


class SentencePieceTokenizer(_NoChatTemplate):
  """A SentencePiece ``.model`` file through ``sentencepiece`` itself (Llama 1/2 ids exactly)."""

  def __init__(self, model_file: str | os.PathLike):
    import sentencepiece as spm  # pylint: disable=import-outside-toplevel
    self.path = Path(model_file)
    self.sp = spm.SentencePieceProcessor(model_file=str(self.path))
    self.vocab_size = int(self.sp.vocab_size())
    self.bos_id = self.sp.bos_id() if self.sp.bos_id() >= 0 else None
    self.eos_id = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
    pad = self.sp.pad_id()
    self.pad_id = _pad_fallback(pad if pad >= 0 else None, self.eos_id)
    self.add_bos_token = self.bos_id is not None
    self._special = {i for i in range(self.vocab_size)
                     if self.sp.is_control(i) or self.sp.is_unknown(i)}

  def save(self, out_dir: str | os.PathLike) -> None:
    _copy_into(out_dir, {"tokenizer.model": self.path})

  @property
  def bos_token(self) -> str | None:
    return None if self.bos_id is None else self.sp.id_to_piece(self.bos_id)

  @property
  def has_chat_template(self) -> bool:
    return False

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    return _with_bos(list(self.sp.encode(text)), add_bos, self.bos_id)

  def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
    ids = [int(i) for i in ids]
    if skip_special:
      return self.sp.decode([i for i in ids if i not in self._special])
    out, run = [], []
    for i in ids:
      if i in self._special:
        if run:
          out.append(self.sp.decode(run))
          run = []
        out.append(self.sp.id_to_piece(i))
      else:
        run.append(i)
    if run:
      out.append(self.sp.decode(run))
    return "".join(out)

  def apply_chat_template(self, messages: list[dict], *,
                          add_generation_prompt: bool) -> str | None:
    del messages, add_generation_prompt
    return None


# --------------------------------------------------------------------------------------------------
# llama2.c tokenizer.bin
# --------------------------------------------------------------------------------------------------

_BYTE_PIECE = re.compile(rb"^<0x([0-9A-Fa-f]{2})>$")


class Llama2cTokenizer(_NoChatTemplate):
  """llama2.c's ``tokenizer.bin``: ``encode``/``decode`` ported from ``run.c``.

  File format: int32 ``max_token_length``, then for every token a float32 score, an int32 byte
  length and the piece's bytes (SentencePiece's "▁" already replaced by a space). Ids 0/1/2 are
  ``<unk>``/``<s>``/``</s>``; byte-fallback tokens ``<0xXX>`` sit at id ``byte + 3``.
  """

  UNK, BOS, EOS = 0, 1, 2

  def __init__(self, path: str | os.PathLike):
    self.path = Path(path)
    data = self.path.read_bytes()
    if len(data) < 4:
      raise ValueError(f"{self.path}: too short for a llama2.c tokenizer (no header)")
    (self.max_token_length,) = struct.unpack_from("<i", data, 0)
    pieces: list[bytes] = []
    scores: list[float] = []
    off = 4
    while off < len(data):
      if off + 8 > len(data):
        raise ValueError(f"{self.path}: token {len(pieces)}: truncated score/length at byte {off}")
      score, n = struct.unpack_from("<fi", data, off)
      off += 8
      if n < 0 or off + n > len(data):
        raise ValueError(f"{self.path}: token {len(pieces)}: bad length {n} at byte {off - 4}")
      pieces.append(data[off:off + n])
      scores.append(score)
      off += n
    if len(pieces) < 3:
      raise ValueError(f"{self.path}: {len(pieces)} tokens; need at least <unk>, <s>, </s>")
    self.pieces = pieces
    self.scores = scores
    self.lookup: dict[bytes, int] = {}
    for i, p in enumerate(pieces):
      self.lookup.setdefault(p, i)
    self.vocab_size = len(pieces)
    self.bos_id = self.BOS
    self.eos_id = self.EOS
    self.pad_id = _pad_fallback(None, self.eos_id)
    self.add_bos_token = True
    self._space = self.lookup.get(b" ")
    self._byte_of: dict[int, int] = {}
    for i, p in enumerate(pieces):
      m = _BYTE_PIECE.match(p)
      if m:
        self._byte_of[i] = int(m.group(1), 16)

  def save(self, out_dir: str | os.PathLike) -> None:
    _copy_into(out_dir, {"tokenizer.bin": self.path})

  @property
  def bos_token(self) -> str | None:
    return None  # no textual form: templates never spell it


  def _initial_tokens(self, text: str) -> list[int]:
    ids: list[int] = []
    if text and self._space is not None:
      ids.append(self._space)  # the dummy prefix, as SentencePiece's add_dummy_prefix
    for ch in text:
      b = ch.encode("utf-8")
      i = self.lookup.get(b)
      if i is not None:
        ids.append(i)
      else:
        ids.extend(x + 3 for x in b)  # byte fallback: <0xXX> lives at id byte + 3
    return ids

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    """Greedy best-score pair merging, exactly as ``encode`` in llama2.c's ``run.c``.

    Ties between equal scores go to the leftmost pair, as llama2.c's left-to-right ``>`` scan. A
    heap over adjacent pairs makes this O(n log n) instead of llama2.c's O(n^2).
    """
    toks = self._initial_tokens(text)
    n = len(toks)
    if n > 1:
      pieces, scores, lookup = self.pieces, self.scores, self.lookup
      nxt = list(range(1, n + 1))
      prv = list(range(-1, n - 1))
      alive = [True] * n
      heap: list[tuple[float, int, int, int, int]] = []

      def push(i: int) -> None:
        j = nxt[i]
        if j >= n:
          return
        m = lookup.get(pieces[toks[i]] + pieces[toks[j]])
        if m is not None:
          heapq.heappush(heap, (-scores[m], i, toks[i], toks[j], m))

      for i in range(n - 1):
        push(i)
      while heap:
        _, i, ti, tj, m = heapq.heappop(heap)
        if not alive[i]:
          continue
        j = nxt[i]
        if j >= n or toks[i] != ti or toks[j] != tj:
          continue  # stale: one side has merged since this pair was pushed
        toks[i] = m
        alive[j] = False
        nxt[i] = nxt[j]
        if nxt[j] < n:
          prv[nxt[j]] = i
        if prv[i] >= 0:
          push(prv[i])
        push(i)
      toks = [t for t, a in zip(toks, alive) if a]
    return _with_bos(toks, add_bos, self.bos_id)

  def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
    """llama2.c's ``decode`` over a sequence, then UTF-8 with ``errors="replace"``.

    The leading space of the first text piece (the dummy prefix) is dropped, as llama2.c does after
    BOS and as SentencePiece does at the start of a sequence.
    """
    out = bytearray()
    at_start = True
    for raw in ids:
      i = int(raw)
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"{self.path}: token id {i} outside [0, {self.vocab_size})")
      if i in (self.UNK, self.BOS, self.EOS):
        if not skip_special:
          out += self.pieces[i]
        continue
      if i in self._byte_of:
        out.append(self._byte_of[i])
      else:
        piece = self.pieces[i]
        if at_start and piece.startswith(b" "):
          piece = piece[1:]
        out += piece
      at_start = False
    return out.decode("utf-8", errors="replace")


# --------------------------------------------------------------------------------------------------
# tiktoken (Llama 3, Qwen v1, GPT-2)
# --------------------------------------------------------------------------------------------------

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
GPT2_PATTERN = (r"'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|"
                r"\s+(?!\S)|\s+")


def _llama3_specials(n_ranks: int) -> dict[str, int]:
  names = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
           "<|reserved_special_token_1|>", "<|reserved_special_token_2|>",
           "<|reserved_special_token_3|>", "<|start_header_id|>", "<|end_header_id|>",
           "<|reserved_special_token_4|>", "<|eot_id|>"]
  names += [f"<|reserved_special_token_{i}|>" for i in range(5, 256 - 5)]
  return {name: n_ranks + i for i, name in enumerate(names)}


def _qwen_specials(n_ranks: int) -> dict[str, int]:
  names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(205)]
  return {name: n_ranks + i for i, name in enumerate(names)}


class TiktokenTokenizer(_NoChatTemplate):
  """A ``tiktoken.Encoding`` with the project's conventions (Llama 3, Qwen v1, GPT-2 files)."""

  def __init__(self, encoding: Any, *, bos: str | None, eos: str | None,
               add_bos_token: bool, name: str, files: Sequence[str | os.PathLike] = ()):
    self.enc = encoding
    self.name = name
    self.files = tuple(Path(f) for f in files)
    self.vocab_size = int(encoding.n_vocab)
    specials = encoding._special_tokens  # pylint: disable=protected-access
    self._special_ids = frozenset(specials.values())
    self._bos = bos
    self.bos_id = specials[bos] if bos is not None else None
    self.eos_id = specials[eos] if eos is not None else None
    self.pad_id = _pad_fallback(None, self.eos_id)
    self.add_bos_token = add_bos_token

  @classmethod
  def llama3(cls, path: str | os.PathLike) -> "TiktokenTokenizer":
    import tiktoken  # pylint: disable=import-outside-toplevel
    from tiktoken.load import load_tiktoken_bpe  # pylint: disable=import-outside-toplevel
    ranks = load_tiktoken_bpe(str(path))
    enc = tiktoken.Encoding(name=Path(path).stem, pat_str=LLAMA3_PATTERN, mergeable_ranks=ranks,
                            special_tokens=_llama3_specials(len(ranks)))
    return cls(enc, bos="<|begin_of_text|>", eos="<|end_of_text|>", add_bos_token=True,
               name="llama3", files=[path])

  @classmethod
  def qwen(cls, path: str | os.PathLike) -> "TiktokenTokenizer":
    import tiktoken  # pylint: disable=import-outside-toplevel
    from tiktoken.load import load_tiktoken_bpe  # pylint: disable=import-outside-toplevel
    ranks = load_tiktoken_bpe(str(path))
    enc = tiktoken.Encoding(name=Path(path).stem, pat_str=QWEN_PATTERN, mergeable_ranks=ranks,
                            special_tokens=_qwen_specials(len(ranks)))
    return cls(enc, bos=None, eos="<|endoftext|>", add_bos_token=False, name="qwen", files=[path])

  @classmethod
  def gpt2(cls, folder: str | os.PathLike) -> "TiktokenTokenizer":
    import tiktoken  # pylint: disable=import-outside-toplevel
    from tiktoken import load as tiktoken_load  # pylint: disable=import-outside-toplevel
    folder = Path(folder)
    ranks = tiktoken_load.data_gym_to_mergeable_bpe_ranks(str(folder / "vocab.bpe"), str(folder / "encoder.json"))
    enc = tiktoken.Encoding(name="gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": len(ranks)})
    # GPT-2's BOS and EOS are both <|endoftext|>; it is not prepended by convention.
    return cls(enc, bos="<|endoftext|>", eos="<|endoftext|>", add_bos_token=False, name="gpt2",
               files=[folder / "encoder.json", folder / "vocab.bpe"])

  def save(self, out_dir: str | os.PathLike) -> None:
    """The source files under their own names (one ``.tiktoken``; GPT-2's encoder.json + vocab.bpe)."""
    if not self.files:
      raise ValueError(f"tiktoken tokenizer {self.name!r} was built in memory: no files to save")
    _copy_into(out_dir, {f.name: f for f in self.files})

  @property
  def bos_token(self) -> str | None:
    return self._bos


  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    return _with_bos(self.enc.encode(text, allowed_special="all"), add_bos, self.bos_id)

  def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
    ids = [int(i) for i in ids]
    if skip_special:
      ids = [i for i in ids if i not in self._special_ids]
    return self.enc.decode(ids)


def _tiktoken_file(path: Path, flavor: str | None) -> TiktokenTokenizer:
  if flavor is None:
    with open(path, "rb") as f:
      n = sum(1 for line in f if line.strip())
    flavor = {128000: "llama3", 151643: "qwen"}.get(n)
    if flavor is None:
      raise ValueError(f"{path}: {n} ranks; cannot tell Llama 3 (128000) from Qwen (151643): "
                       "pass flavor='llama3' or flavor='qwen'")
  if flavor == "llama3":
    return TiktokenTokenizer.llama3(path)
  if flavor == "qwen":
    return TiktokenTokenizer.qwen(path)
  raise ValueError(f"{path}: unknown tiktoken flavor {flavor!r} (llama3, qwen)")


def load_tokenizer(path: str | os.PathLike, **kw) -> Tokenizer:
  """The tokenizer stored at ``path``; the format is chosen from the path (see module docstring).

  Args:
    path: a folder or a file.
    **kw: ``flavor`` ("llama3"/"qwen") for a ``.tiktoken`` file; anything else goes to
      ``AutoTokenizer.from_pretrained``.
  """
  path = Path(path)
  flavor = kw.pop("flavor", None)
  if not path.exists():
    raise FileNotFoundError(f"no tokenizer at {path}")
  if path.is_dir():
    if (path / "tokenizer.json").exists() or (path / "tokenizer_config.json").exists():
      return HFTokenizer.from_pretrained(path, **kw)
    if (path / "encoder.json").exists() and (path / "vocab.bpe").exists():
      return TiktokenTokenizer.gpt2(path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
      return HFTokenizer.from_pretrained(ggufs[0], **kw)
    for name, ctor in (("tokenizer.model", SentencePieceTokenizer),
                       ("tokenizer.bin", Llama2cTokenizer)):
      if (path / name).exists():
        return ctor(path / name)
    tiks = sorted(path.glob("*.tiktoken"))
    if len(tiks) == 1:
      return _tiktoken_file(tiks[0], flavor)
    raise ValueError(f"{path}: no tokenizer files recognised in this folder")
  suffix = path.suffix.lower()
  if suffix == ".gguf":
    return HFTokenizer.from_pretrained(path, **kw)
  if suffix == ".model":
    return SentencePieceTokenizer(path)
  if suffix == ".bin":
    return Llama2cTokenizer(path)
  if suffix == ".tiktoken":
    return _tiktoken_file(path, flavor)
  if path.name in ("encoder.json", "vocab.bpe"):
    return TiktokenTokenizer.gpt2(path.parent)
  if path.name in ("tokenizer.json", "tokenizer_config.json"):
    return HFTokenizer.from_pretrained(path.parent, **kw)
  raise ValueError(f"{path}: unrecognised tokenizer file (.gguf, .model, .bin, .tiktoken, "
                   "encoder.json/vocab.bpe, or a Hugging Face folder)")



def _is_transformers_tokenizer(obj: Any) -> bool:
  """A ``transformers`` tokenizer object (checked without importing transformers if nobody has)."""
  if "transformers" not in sys.modules:
    return False
  from transformers import PreTrainedTokenizerBase  # pylint: disable=import-outside-toplevel
  return isinstance(obj, PreTrainedTokenizerBase)


def as_tokenizer(obj: Any) -> Tokenizer:
  """``obj`` as the project's `Tokenizer`.

  A `Tokenizer` (the project's classes, or any object with the protocol's attributes) is returned as
  is; a ``transformers`` tokenizer (``PreTrainedTokenizerBase``: ``AutoTokenizer.from_pretrained``'s
  result) is wrapped in `HFTokenizer`. Anything else raises TypeError naming the accepted types.
  """
  if isinstance(obj, Tokenizer):
    return obj
  if _is_transformers_tokenizer(obj):
    return HFTokenizer(obj)
  hint = (" (a path: load it with elasticity.tokenizers.load_tokenizer first)"
          if isinstance(obj, (str, os.PathLike)) else "")
  raise TypeError(f"expected a tokenizer: an elasticity.tokenizers.Tokenizer (HFTokenizer, "
                  f"SentencePieceTokenizer, Llama2cTokenizer, TiktokenTokenizer, or an object with its "
                  f"attributes) or a transformers PreTrainedTokenizerBase; got {type(obj).__name__}{hint}")
