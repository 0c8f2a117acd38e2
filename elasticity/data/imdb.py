"""IMDb reviews (Maas et al., 2011): labelled text, and the rebound task's prompt/response form.

Local source: the tarball ``aclImdb_labeled_train_test.tar.gz`` or an extracted ``aclImdb`` folder,
laid out as ``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``. The tarball is streamed once
(sequential ``tarfile`` iteration: 2–5 s for all 50,000 reviews) and the parsed reviews are kept in an
in-process LRU cache keyed by the file's path, size and mtime, and on disk (``imdb-<key>.npz``: one
UTF-8 blob with offsets, no pickle; written atomically; a tarball whose members all parsed) under
``$ELASTICITY_DATA_CACHE``, else ``$XDG_CACHE_HOME/elasticity/data`` or ``~/.cache/elasticity/data``
(``ELASTICITY_DATA_CACHE=off`` turns it off), so the next process reads the reviews in a fraction of a
second. A cache file that cannot be read is rebuilt. Records are sorted by label
(``"neg"`` < ``"pos"``) then numeric id, so the order never depends on the archive or the file system.

Record: ``{"text", "label" ("pos"/"neg"), "label_id" (1/0), "rating" (1-10), "id"}``. Reviews contain
``<br />`` tags; they are kept by default (``replace_br=True`` turns them into newlines).

Rebound form (``prompt_len=k``): ``prompt`` = the first ``k`` tokens of the review (``tokenizer``
given) or its first ``k`` whitespace-separated words, ``response`` = the rest of the review.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from absl import logging

from elasticity import atomic, paths

from elasticity.data.errors import DataError
from elasticity.data.records import Records, Row, collect, text_field
from elasticity.data.registry import register
from elasticity.data.sources import iter_hf, iter_tfds
from elasticity.paths import shared_path
from elasticity.tokenizers import as_tokenizer

SPLITS = ("train", "test")
LABELS = ("neg", "pos")
TARBALL = "aclImdb_labeled_train_test.tar.gz"
_NAME = re.compile(r"^(\d+)_(\d+)\.txt$")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)

# (split, label, id, rating, text | None, error | None), sorted.
_Parsed = tuple[tuple[str, str, int, int, str | None, DataError | None], ...]


def _parse_member(source: str, member: str, data: bytes
                  ) -> tuple[str, str, int, int, str | None, DataError | None] | None:
  parts = member.split("/")
  if len(parts) < 3 or parts[-3] not in SPLITS or parts[-2] not in LABELS:
    return None  # imdb.vocab, README, urls_*.txt, ...
  split, label, name = parts[-3], parts[-2], parts[-1]
  if not name.endswith(".txt"):
    return None
  m = _NAME.match(name)
  if not m:
    return (split, label, -1, -1, None,
            DataError(source, member, "filename", "expected <id>_<rating>.txt", unit="member"))
  rid, rating = int(m.group(1)), int(m.group(2))
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    return (split, label, rid, rating, None,
            DataError(source, member, "text",
                      f"not valid UTF-8: bytes {data[e.start:e.end]!r} at byte {e.start}",
                      unit="member"))
  return split, label, rid, rating, text, None


def _sort(rows: list) -> _Parsed:
  return tuple(sorted(rows, key=lambda r: (r[0], r[1], r[2], r[3])))


_CACHE_FORMAT = 1
_OFF = ("off", "none", "false", "0")


def cache_file(path: str, size: int, mtime_ns: int) -> Path | None:
  """Where the parsed reviews of the tarball ``path`` are cached on disk (None: turned off)."""
  root = os.environ.get("ELASTICITY_DATA_CACHE", "")
  if root and root.lower() in _OFF:
    return None
  if not root:
    root = paths.cache_dir("data")
  key = hashlib.sha256(f"{_CACHE_FORMAT}|{path}|{size}|{mtime_ns}".encode()).hexdigest()[:16]
  return Path(root) / f"imdb-{key}.npz"


def _save_cache(file: Path, rows: _Parsed) -> None:
  texts = [r[4].encode("utf-8") for r in rows]
  arrays = dict(
      text=np.frombuffer(b"".join(texts), dtype=np.uint8),
      offsets=np.cumsum([0] + [len(t) for t in texts], dtype=np.int64),
      split=np.asarray([SPLITS.index(r[0]) for r in rows], np.uint8),
      label=np.asarray([LABELS.index(r[1]) for r in rows], np.uint8),
      id=np.asarray([r[2] for r in rows], np.int64),
      rating=np.asarray([r[3] for r in rows], np.int16))
  try:
    file.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_with(file, lambda tmp: np.savez(tmp, **arrays), suffix=".npz")
  except OSError as e:            # a read-only home, a full disk: the cache is an optimisation only
    logging.warning("imdb: could not write the cache %s (%s)", file, e)


def _load_cache(file: Path) -> _Parsed | None:
  try:
    with np.load(file, allow_pickle=False) as z:
      blob, off = z["text"].tobytes(), z["offsets"]
      split, label, ids, rating = z["split"], z["label"], z["id"], z["rating"]
    if len(off) != len(ids) + 1 or int(off[-1]) != len(blob):
      raise ValueError("offsets do not match the text")
    return tuple((SPLITS[int(split[j])], LABELS[int(label[j])], int(ids[j]), int(rating[j]),
                  blob[int(off[j]):int(off[j + 1])].decode("utf-8"), None) for j in range(len(ids)))
  except (OSError, ValueError, KeyError, IndexError, UnicodeDecodeError, zipfile.BadZipFile) as e:
    logging.warning("imdb: the cache %s is unreadable (%s); parsing the tarball again", file, e)
    return None


@functools.lru_cache(maxsize=4)
def _read_tar(path: str, size: int, mtime_ns: int) -> _Parsed:
  file = cache_file(path, size, mtime_ns)
  if file is not None and file.exists():
    rows = _load_cache(file)
    if rows is not None:
      return rows
  rows = _parse_tar(path)
  if file is not None and all(r[5] is None for r in rows):   # errors are raised from the tarball
    _save_cache(file, rows)
  return rows


def _parse_tar(path: str) -> _Parsed:
  rows, name = [], "(the archive's header)"
  try:
    with tarfile.open(path, mode="r|*") as tar:  # stream: one sequential pass
      for member in tar:
        name = f"after {member.name}"
        if not member.isfile():
          continue
        f = tar.extractfile(member)
        parsed = _parse_member(path, member.name, f.read() if f else b"")
        if parsed is not None:
          rows.append(parsed)
      name = "(the archive's end)"
      while tar.fileobj.read(1 << 20):   # to the compressed stream's end, which must be there
        pass
      if not getattr(getattr(tar.fileobj, "cmp", None), "eof", True):
        raise EOFError("the compressed stream ends before its end marker")
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:   # truncated or damaged download
    raise DataError(path, name, None, f"truncated or damaged tarball ({type(e).__name__}: {e}); "
                    "download it again", unit="member") from None
  return _sort(rows)


@functools.lru_cache(maxsize=4)
def _read_folder(path: str, mtime_ns: int) -> _Parsed:
  del mtime_ns
  rows = []
  for split in SPLITS:
    for label in LABELS:
      folder = Path(path) / split / label
      if not folder.is_dir():
        continue
      for entry in os.scandir(folder):
        if entry.is_file():
          with open(entry.path, "rb") as f:
            parsed = _parse_member(path, f"{split}/{label}/{entry.name}", f.read())
          if parsed is not None:
            rows.append(parsed)
  return _sort(rows)


def _locate(data_dir, path) -> Path:
  if path is not None:
    return Path(path)
  folder = Path(data_dir) if data_dir is not None else shared_path("data", "imdb")
  for cand in (folder / "aclImdb", folder / TARBALL):
    if cand.exists():
      return cand
  if (folder / "train").is_dir() or (folder / "test").is_dir():
    return folder
  raise FileNotFoundError(f"no aclImdb folder or {TARBALL} in {folder} (put it there, set "
                          "ELASTICITY_SHARED to the folder that holds data/, or give the loader "
                          "data_dir= or path= — in a config file, data.load_kwargs)")


def read_reviews(path: str | os.PathLike) -> _Parsed:
  """All labelled reviews under ``path`` (a tarball or an ``aclImdb`` folder), cached."""
  p = Path(path).resolve()
  st = p.stat()
  if p.is_dir():
    stamp = max([st.st_mtime_ns] + [(p / s / l).stat().st_mtime_ns
                                    for s in SPLITS for l in LABELS if (p / s / l).is_dir()])
    return _read_folder(str(p), stamp)
  return _read_tar(str(p), st.st_size, st.st_mtime_ns)


def split_prompt(text: str, k: int, tokenizer=None) -> tuple[str, str, int]:
  """``(prompt, response, n)``: the first ``k`` tokens (or words) of ``text``, and the rest.

  With a tokenizer, the prompt is the decoded text of the first ``n <= k`` tokens, where ``n`` is the
  largest count whose decoding is an exact prefix of ``text`` (a token cut inside a multi-byte
  character does not decode to a prefix). Without one, the prompt ends with the ``k``-th
  whitespace-separated word and the response starts with the whitespace after it. ``ValueError`` if
  nothing is left for the response.
  """
  if k < 1:
    raise ValueError(f"prompt length must be >= 1, got {k}")
  if tokenizer is None:
    words = list(re.finditer(r"\S+", text))
    if len(words) <= k:
      raise ValueError(f"{len(words)} words, need more than {k}")
    cut = words[k - 1].end()
    return text[:cut], text[cut:], k
  tokenizer = as_tokenizer(tokenizer)   # a pass-through once wrapped
  ids = tokenizer.encode(text)
  if len(ids) <= k:
    raise ValueError(f"{len(ids)} tokens, need more than {k}")
  for n in range(k, 0, -1):
    prompt = tokenizer.decode(ids[:n])
    if prompt and text.startswith(prompt):
      return prompt, text[len(prompt):], n
  raise ValueError(f"no decoding of the first {k} tokens is a prefix of the text")


@register("imdb")
def imdb(*, split=None, data_dir=None, source=None, on_error="raise", path=None,
         label: str | None = None, replace_br: bool = False, prompt_len: int | None = None,
         tokenizer=None, hf_name: str = "stanfordnlp/imdb", tfds_name: str = "imdb_reviews"
         ) -> Records:
  """IMDb reviews of one split (``"train"`` default, or ``"test"``): 25,000 each.

  Args:
    label: keep only ``"pos"`` or ``"neg"`` reviews.
    replace_br: turn ``<br />`` tags into newlines.
    prompt_len: the rebound form: ``prompt`` = first ``prompt_len`` tokens (with ``tokenizer``) or
      words, ``response`` = the rest (``text`` is kept; ``prompt_tokens`` says how many were used).
    tokenizer: a ``elasticity.tokenizers.Tokenizer`` for ``prompt_len`` in tokens.
  """
  split = split or "train"
  if split not in SPLITS:
    raise ValueError(f"imdb: split {split!r} not available; one of {SPLITS}")
  if tokenizer is not None:
    tokenizer = as_tokenizer(tokenizer)   # once, not per review
  if label not in (None, *LABELS):
    raise ValueError(f"imdb: label must be 'pos', 'neg' or None, got {label!r}")

  if source in ("hf", "tfds"):
    if source == "hf":
      rows, file = iter_hf(hf_name, split=split), f"hf:{hf_name}[{split}]"
    else:
      rows, file = iter_tfds(tfds_name, split=split), f"tfds:{tfds_name}[{split}]"
    raw: Iterator[Row] = rows
    unit = "row"

    def fields(row: Row) -> tuple[str, int, int | None, int]:
      v = row.value
      if v.get("label") not in (0, 1):
        raise DataError(file, row.number, "label", f"expected 0 or 1, got {v.get('label')!r}",
                        unit=unit)
      return LABELS[v["label"]], row.number - 1, None, v.get("text")
  else:
    loc = _locate(data_dir, path)
    file, unit = str(loc), "member"
    parsed = [r for r in read_reviews(loc) if r[0] == split]

    def gen() -> Iterator[Row]:
      for s, lab, rid, rating, text, err in parsed:
        yield Row(f"{s}/{lab}/{rid}_{rating}.txt", (lab, rid, rating, text), err)
    raw = gen()

    def fields(row: Row) -> tuple[str, int, int | None, str]:
      return row.value

  def build(row: Row) -> dict | None:
    lab, rid, rating, text = fields(row)
    if label is not None and lab != label:
      return None
    text = text_field(text, file=file, record=row.number, field="text", unit=unit)
    if replace_br:
      text = _BR.sub("\n", text)
    rec = {"text": text, "label": lab, "label_id": int(lab == "pos"), "id": rid}
    if rating is not None:
      rec["rating"] = rating
    if prompt_len is not None:
      try:
        prompt, response, n = split_prompt(text, prompt_len, tokenizer)
      except ValueError as e:
        raise DataError(file, row.number, "text", f"too short for the rebound form: {e}",
                        unit=unit) from None
      rec.update(prompt=prompt, response=response, prompt_tokens=n)
    return rec

  kind = "sft" if prompt_len is not None else "text"
  return collect(raw, build, kind=kind, source=file, on_error=on_error)
