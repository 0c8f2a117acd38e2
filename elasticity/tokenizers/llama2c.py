"""The llama2.c backend: Karpathy's ``tokenizer.bin``, ``encode``/``decode`` ported from ``run.c``."""

from __future__ import annotations

import heapq
import os
import re
import struct
from collections.abc import Sequence
from pathlib import Path

from elasticity.tokenizers.base import NoChatTemplate, copy_into, pad_fallback, with_bos

_BYTE_PIECE = re.compile(rb"^<0x([0-9A-Fa-f]{2})>$")


class Llama2cTokenizer(NoChatTemplate):
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
    self.pad_id = pad_fallback(None, self.eos_id)
    self.add_bos_token = True
    self._space = self.lookup.get(b" ")
    self._byte_of: dict[int, int] = {}
    for i, p in enumerate(pieces):
      m = _BYTE_PIECE.match(p)
      if m:
        self._byte_of[i] = int(m.group(1), 16)

  def save(self, out_dir: str | os.PathLike) -> None:
    copy_into(out_dir, {"tokenizer.bin": self.path})

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
    return with_bos(toks, add_bos, self.bos_id)

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
