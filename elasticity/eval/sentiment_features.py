"""Word tokens and binarized n-gram features of the built-in sentiment classifier (pure numpy).

A **token** is the classifier's own word token: the review is lower-cased, ``<br />`` tags become
spaces, and tokens are the matches of ``[a-z0-9]+(?:'[a-z0-9]+)*`` (words, with inner apostrophes:
"don't") or one of ``!`` and ``?``. Everything else (other punctuation, markup) separates tokens.
``" ".join(tokens(t))`` tokenizes back to the same tokens, so `first_tokens` can cut a text.

Features are the *presence* (0/1) of each unigram, bigram, … up to ``max_n``-gram of tokens in a
text. The vocabulary holds the training unigrams (id 0 is the unknown token; an n-gram containing
it is dropped) and, per order n ≥ 2, the sorted int64 keys ``((a·V + b)·V + c)…`` of the n-grams
that occur in at least ``min_df`` training texts. A text becomes the sorted ids of its features:
unigram id ``u`` is feature ``u − 1``, then each order's keys follow in order (`Vocab.offsets`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*|[!?]")
UNK = "<unk>"


def tokens(text: str) -> list[str]:
  """The classifier's word tokens of ``text`` (see the module docstring)."""
  return _TOKEN.findall(_BR.sub(" ", text).lower())


def first_tokens(text: str, n: int) -> str:
  """The first ``n`` classifier tokens of ``text``, joined by spaces."""
  return " ".join(tokens(text)[:n])


@dataclass(frozen=True)
class Vocab:
  """Unigram strings (index 0 = ``<unk>``) and the kept n-gram keys of each order ≥ 2."""
  words: tuple[str, ...]
  ngram_keys: tuple[np.ndarray, ...]    # order 2, 3, …: sorted unique int64 keys

  def __post_init__(self):
    if not self.words or self.words[0] != UNK:
      raise ValueError(f"vocabulary: the first word must be {UNK!r}")
    v = len(self.words)
    if float(v) ** self.max_n >= 2.0 ** 63:
      raise ValueError(f"vocabulary: {v} words ** {self.max_n} overflows int64 n-gram keys")
    object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.words)})

  @property
  def max_n(self) -> int:
    return 1 + len(self.ngram_keys)

  @property
  def offsets(self) -> tuple[int, ...]:
    """Feature id of the first feature of each order (1, 2, …) and the total, ``len = max_n + 1``."""
    out = [0, len(self.words) - 1]
    for k in self.ngram_keys:
      out.append(out[-1] + len(k))
    return tuple(out)

  @property
  def num_features(self) -> int:
    return self.offsets[-1]

  def word_ids(self, text: str) -> np.ndarray:
    index = self._index
    return np.fromiter((index.get(t, 0) for t in tokens(text)), dtype=np.int64)

  def features(self, text: str) -> np.ndarray:
    """Sorted unique int32 feature ids present in ``text``."""
    return encode(self, [text])[0]


def ngram_keys(ids: np.ndarray, n: int, v: int, text_ids: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """``(keys, ok)`` of the ``len(ids) − n + 1`` windows: key ``Σ ids[i+j]·v^(n−1−j)``.

  ``ok``: the window has no unknown word and (given ``text_ids``, the text of each position of a
  concatenation of texts) lies inside one text.
  """
  m = len(ids) - n + 1
  if m <= 0:
    return np.zeros(0, np.int64), np.zeros(0, bool)
  key = np.zeros(m, np.int64)
  ok = np.ones(m, bool)
  for j in range(n):
    w = ids[j:j + m]
    key = key * v + w
    ok &= w > 0
  if text_ids is not None:
    ok &= text_ids[:m] == text_ids[n - 1:]
  return key, ok


def _unique(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """``(sorted unique values, inverse)`` by one sort (numpy 2's hash-based ``np.unique`` is slower)."""
  order = np.argsort(a, kind="stable")
  s = a[order]
  first = np.ones(len(s), bool)
  first[1:] = s[1:] != s[:-1]
  inverse = np.empty(len(a), np.int64)
  inverse[order] = np.cumsum(first) - 1
  return s[first], inverse


def _sorted_set(a: np.ndarray) -> np.ndarray:
  s = np.sort(a)
  keep = np.ones(len(s), bool)
  keep[1:] = s[1:] != s[:-1]
  return s[keep]


def _concat_ids(index: dict[str, int], toks: Sequence[list[str]]) -> tuple[np.ndarray, np.ndarray]:
  lengths = np.fromiter((len(t) for t in toks), dtype=np.int64, count=len(toks))
  flat = np.fromiter((index.get(w, 0) for ts in toks for w in ts), dtype=np.int64,
                     count=int(lengths.sum()))
  return flat, np.repeat(np.arange(len(toks), dtype=np.int64), lengths)


def build_vocab(texts: Sequence[str], *, max_n: int, min_df: int, min_word_df: int = 1) -> Vocab:
  """The vocabulary of ``texts``: words in ≥ ``min_word_df`` texts, n-grams in ≥ ``min_df`` texts."""
  if max_n < 1 or min_df < 1 or min_word_df < 1:
    raise ValueError(f"build_vocab: max_n, min_df, min_word_df must be >= 1, got "
                     f"{max_n}, {min_df}, {min_word_df}")
  toks = [tokens(t) for t in texts]
  df: dict[str, int] = {}
  for ts in toks:
    for w in set(ts):
      df[w] = df.get(w, 0) + 1
  words = (UNK, *sorted(w for w, c in df.items() if c >= min_word_df))
  index = {w: i for i, w in enumerate(words)}
  flat, text_ids = _concat_ids(index, toks)
  kept = []
  for n in range(2, max_n + 1):
    key, ok = ngram_keys(flat, n, len(words), text_ids)
    uniq, inv = _unique(key[ok])
    pairs = _sorted_set(text_ids[:len(ok)][ok] * max(len(uniq), 1) + inv)   # (text, n-gram) once
    df = np.bincount(pairs % max(len(uniq), 1), minlength=len(uniq))
    kept.append(uniq[df >= min_df])
  return Vocab(words, tuple(kept))


def encode(vocab: Vocab, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """``(feature_ids, text_ids)`` int32: each text's sorted unique feature ids, text after text."""
  flat, text_ids = _concat_ids(vocab._index, [tokens(t) for t in texts])
  offsets = vocab.offsets
  fids, tids = [flat[flat > 0] - 1], [text_ids[flat > 0]]
  for order, keys in enumerate(vocab.ngram_keys, start=2):
    key, ok = ngram_keys(flat, order, len(vocab.words), text_ids)
    key, t = key[ok], text_ids[:len(ok)][ok]
    if not len(keys):
      continue
    pos = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
    hit = keys[pos] == key
    fids.append(offsets[order - 1] + pos[hit])
    tids.append(t[hit])
  f = max(vocab.num_features, 1)
  pairs = _sorted_set(np.concatenate(tids) * f + np.concatenate(fids))
  return (pairs % f).astype(np.int32), (pairs // f).astype(np.int32)


def nb_ratio(vocab_size: int, feature_ids: np.ndarray, text_ids: np.ndarray, labels: np.ndarray,
             alpha: float) -> np.ndarray:
  """NB log-count ratio ``r = log((p/‖p‖₁) / (q/‖q‖₁))``, p = α + Σ_pos x, q = α + Σ_neg x (float64)."""
  labels = np.asarray(labels)
  pos = labels[text_ids] == 1
  p = alpha + np.bincount(feature_ids[pos], minlength=vocab_size).astype(np.float64)
  q = alpha + np.bincount(feature_ids[~pos], minlength=vocab_size).astype(np.float64)
  return np.log(p / p.sum()) - np.log(q / q.sum())
