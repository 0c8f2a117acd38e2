"""GGUF files → Flax models, read directly: one header parse, ``gguf``'s numpy dequantizers.

The header (metadata key/values and the tensor table) is parsed once by a small reader over an
``mmap`` of the file, using the ``gguf`` package's type tables; tensor bytes are never copied until
they are dequantized (``gguf.quants``, the same numpy routines transformers' GGUF path calls, so the
float32 tensors are bitwise those of ``from_pretrained(gguf_file=...)``). ``gguf.GGUFReader`` is not
used for the header: it builds a numpy view per vocabulary string, ~4 s for a 49K-token vocabulary.

From GGUF to the Flax layout: the metadata becomes a Hugging Face config dict (the same keys
transformers reads, ``_CONFIG_KEYS``), GGUF tensor names map to HF names through ``gguf``'s
``TensorNameMap``, and from there `elasticity.convert.mapping` applies. Family quirks of llama.cpp's
converter are undone here, as transformers does: Llama's q/k rows were permuted (rotate-half →
interleaved pairs) and Gemma's RMSNorm weights were stored as ``1 + w``.

The tokenizer still comes through transformers (`elasticity.tokenizers.load_tokenizer`). Reading
needs the ``gguf`` package (the ``gguf`` extra); torch is not needed.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import logging

from elasticity.convert.mapping import entries
from elasticity.convert.params import model_from_tensors
from elasticity.models.registry import config_from_hf
from elasticity.models.transformer import CausalLM

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32

# GGUF architecture → (HF model_type, {metadata key after "<arch>." → HF config key}); the keys are
# transformers' GGUF_CONFIG_MAPPING for the families the ports cover.
_COMMON_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size",
    "embedding_length": "hidden_size",
    "rope.freq_base": "rope_theta",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "vocab_size": "vocab_size",
}
_CONFIG_KEYS: dict[str, tuple[str, dict[str, str]]] = {
    "llama": ("llama", {**_COMMON_KEYS, "rope.dimension_count": "head_dim"}),
    "qwen2": ("qwen2", dict(_COMMON_KEYS)),
    "gemma2": ("gemma2", {**_COMMON_KEYS, "attention.key_length": "head_dim",
                          "attention.sliding_window": "sliding_window"}),
    "gemma3": ("gemma3_text", {**_COMMON_KEYS, "attention.key_length": "head_dim",
                               "attention.sliding_window": "sliding_window"}),
}
_TOKEN_KEYS = {"tokenizer.ggml.bos_token_id": "bos_token_id", "tokenizer.ggml.eos_token_id": "eos_token_id",
               "tokenizer.ggml.unknown_token_id": "unk_token_id",
               "tokenizer.ggml.padding_token_id": "pad_token_id"}
# Families whose HF config carries defaults the GGUF metadata does not (Gemma's soft-caps, layer
# types, per-layer RoPE): completed by transformers' config class, as its own GGUF path does.
_NEEDS_HF_DEFAULTS = ("gemma2", "gemma3_text")


@dataclass(frozen=True)
class TensorInfo:
  name: str
  shape: tuple[int, ...]     # numpy order (GGUF lists dimensions innermost first)
  qtype: Any                 # gguf.GGMLQuantizationType
  offset: int                # absolute byte offset in the file
  nbytes: int


@dataclass(frozen=True)
class GGUFHeader:
  """The parsed header of a GGUF file: metadata and tensor table (no tensor data)."""
  path: Path
  version: int
  metadata: dict[str, Any]
  tensors: dict[str, TensorInfo]

  @property
  def architecture(self) -> str:
    try:
      return str(self.metadata["general.architecture"])
    except KeyError:
      raise ValueError(f"{self.path}: no general.architecture in the GGUF metadata") from None


class _Cursor:
  """Little-endian reads from a buffer, with errors that name the file and the offset."""

  def __init__(self, buf, path: Path):
    self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)

  def unpack(self, fmt: str):
    n = struct.calcsize(fmt)
    if self.pos + n > self.size:
      raise ValueError(f"{self.path}: truncated GGUF header at byte {self.pos}")
    out = struct.unpack_from(fmt, self.buf, self.pos)
    self.pos += n
    return out

  def string(self) -> str:
    (n,) = self.unpack("<Q")
    if self.pos + n > self.size:
      raise ValueError(f"{self.path}: truncated GGUF string at byte {self.pos}")
    s = self.buf[self.pos:self.pos + n]
    self.pos += n
    return s.decode("utf-8", errors="replace")


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def _value(cur: _Cursor, vtype: int, key: str):
  if vtype in _SCALARS:
    return cur.unpack(_SCALARS[vtype])[0]
  if vtype == _STRING:
    return cur.string()
  if vtype == _ARRAY:
    itype, n = cur.unpack("<IQ")
    if itype in _SCALARS:
      dt = np.dtype(_SCALARS[itype])
      end = cur.pos + n * dt.itemsize
      if end > cur.size:
        raise ValueError(f"{cur.path}: truncated array {key!r} at byte {cur.pos}")
      arr = np.frombuffer(cur.buf, dt, n, cur.pos).copy()
      cur.pos = end
      return arr.tolist()
    if itype == _STRING:
      return [cur.string() for _ in range(n)]
    return [_value(cur, itype, key) for _ in range(n)]
  raise ValueError(f"{cur.path}: metadata {key!r} has unknown GGUF value type {vtype}")


def _open(path: Path) -> mmap.mmap:
  with open(path, "rb") as f:
    return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


@functools.lru_cache(maxsize=4)
def _read_header(path: Path, mtime_ns: int, size: int) -> GGUFHeader:
  del mtime_ns, size  # cache keys: a rewritten file is parsed again
  from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
  buf = _open(path)
  cur = _Cursor(buf, path)
  if cur.size < 24 or buf[:4] != MAGIC:
    raise ValueError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r})")
  cur.pos = 4
  (version,) = cur.unpack("<I")
  if version not in (2, 3):
    raise ValueError(f"{path}: GGUF version {version} is not supported (2 or 3; big-endian files are "
                     "not supported)")
  n_tensors, n_kv = cur.unpack("<QQ")
  metadata = {}
  for _ in range(n_kv):
    key = cur.string()
    (vtype,) = cur.unpack("<I")
    metadata[key] = _value(cur, vtype, key)
  infos = []
  for _ in range(n_tensors):
    name = cur.string()
    (n_dims,) = cur.unpack("<I")
    dims = cur.unpack(f"<{n_dims}Q")
    qraw, offset = cur.unpack("<IQ")
    try:
      qtype = GGMLQuantizationType(qraw)
    except ValueError:
      raise ValueError(f"{path}: tensor {name!r} has unknown GGML type {qraw}") from None
    block, type_size = GGML_QUANT_SIZES[qtype]
    if dims[0] % block:
      raise ValueError(f"{path}: tensor {name!r} row of {dims[0]} is not a whole number of {qtype.name} "
                       f"blocks of {block}")
    nbytes = int(np.prod(dims[1:], dtype=np.int64)) * (dims[0] // block) * type_size
    infos.append((name, tuple(int(d) for d in reversed(dims)), qtype, offset, nbytes))
  align = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
  start = cur.pos + (-cur.pos % align)
  tensors = {}
  for name, shape, qtype, offset, nbytes in infos:
    if start + offset + nbytes > cur.size:
      raise ValueError(f"{path}: tensor {name!r} runs past the end of the file (truncated download?)")
    tensors[name] = TensorInfo(name, shape, qtype, start + offset, nbytes)
  return GGUFHeader(path, version, metadata, tensors)


def read_header(path: str | os.PathLike) -> GGUFHeader:
  """The metadata and tensor table of a GGUF file (cached per file version; no tensor data read)."""
  path = Path(path).resolve()
  st = path.stat()
  return _read_header(path, st.st_mtime_ns, st.st_size)


def _dequantize(buf, info: TensorInfo) -> np.ndarray:
  """float32 values of one tensor, by ``gguf.quants`` (elementwise, so bitwise its ``dequantize``)."""
  from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants
  raw = np.frombuffer(buf, np.uint8, info.nbytes, info.offset)
  block, type_size = GGML_QUANT_SIZES[info.qtype]
  raw = raw.reshape(*info.shape[:-1], info.shape[-1] // block * type_size)
  if info.qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
    return quants.dequantize(raw, info.qtype).astype(np.float32, copy=False)
  cls = getattr(quants, info.qtype.name, None)
  if cls is None or not hasattr(cls, "dequantize_rows"):
    return quants.dequantize(raw, info.qtype)
  # gguf's `dequantize` runs its per-block formula over groups of 16 rows; the formula is elementwise,
  # so larger groups give the same bits with far less Python overhead.
  cls.init_grid()
  rows = raw.reshape(-1, raw.shape[-1])
  out = np.empty((rows.shape[0], info.shape[-1]), np.float32)
  step = max(1, (1 << 20) // info.shape[-1])
  for i in range(0, rows.shape[0], step):
    out[i:i + step] = cls.dequantize_rows(rows[i:i + step])
  return out.reshape(info.shape)


def hf_config(header: GGUFHeader) -> dict[str, Any]:
  """The Hugging Face config dict described by a GGUF file's metadata."""
  arch = header.architecture
  if arch not in _CONFIG_KEYS:
    raise ValueError(f"{header.path}: GGUF architecture {arch!r} is not supported "
                     f"(supported: {', '.join(sorted(_CONFIG_KEYS))})")
  model_type, keys = _CONFIG_KEYS[arch]
  md = header.metadata
  d: dict[str, Any] = {"model_type": model_type}
  for suffix, hf_key in keys.items():
    if f"{arch}.{suffix}" in md:
      d[hf_key] = md[f"{arch}.{suffix}"]
  for key, hf_key in _TOKEN_KEYS.items():
    if key in md:
      d[hf_key] = md[key]
  if "vocab_size" not in d and "tokenizer.ggml.tokens" in md:
    d["vocab_size"] = len(md["tokenizer.ggml.tokens"])
  d["tie_word_embeddings"] = "output.weight" not in header.tensors
  if "general.name" in md:
    d["_model_name_or_path"] = md["general.name"]
  missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                         "intermediate_size") if k not in d]
  if missing:
    raise ValueError(f"{header.path}: GGUF metadata lacks {missing} for architecture {arch!r}")
  if model_type in _NEEDS_HF_DEFAULTS:
    import transformers  # pylint: disable=import-outside-toplevel
    d = transformers.AutoConfig.for_model(**d).to_dict()
  return d


def read_gguf_config(path: str | os.PathLike) -> dict:
  """The HF config dict of a GGUF file, without reading its tensors."""
  return hf_config(read_header(path))


def _hf_to_gguf_names(header: GGUFHeader, cfg) -> dict[str, str]:
  """HF tensor name → GGUF tensor name, for every tensor the Flax model of ``cfg`` needs."""
  from gguf import MODEL_ARCH_NAMES, get_tensor_name_map
  arch = next((a for a, n in MODEL_ARCH_NAMES.items() if n == header.architecture), None)
  if arch is None:
    raise ValueError(f"{header.path}: the gguf package does not know architecture {header.architecture!r}")
  name_map = get_tensor_name_map(arch, cfg.num_layers)
  out = {}
  for e in entries(cfg):
    base, suffix = e.hf_name.rsplit(".", 1)
    gguf_name = name_map.get_name(base)
    if gguf_name is None:
      raise ValueError(f"{header.path}: no GGUF name for tensor {e.hf_name!r}")
    out[e.hf_name] = f"{gguf_name}.{suffix}"
  return out


def _unpermute_rows(w: np.ndarray, heads: int) -> np.ndarray:
  """llama.cpp's q/k row order (interleaved pairs per head) → HF's rotate-half order."""
  rows = w.shape[0]
  return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_gguf(path: str | os.PathLike, *, threads: int | None = None) -> tuple[dict, dict]:
  """(HF config dict, HF-named float32 numpy tensors) of a GGUF file.

  Tensors are dequantized on ``threads`` threads (default: up to 8, numpy releases the GIL).
  """
  header = read_header(path)
  cfg_dict = hf_config(header)
  cfg = config_from_hf(cfg_dict)
  names = _hf_to_gguf_names(header, cfg)
  present = {h: g for h, g in names.items() if g in header.tensors}
  unused = sorted(set(header.tensors) - set(present.values()))
  if unused:
    logging.info("%s: GGUF tensors not used by the %s model: %s", header.path, cfg.family, unused[:10])
  buf = _open(header.path)
  arch = header.architecture

  def one(item):
    hf_name, gguf_name = item
    w = _dequantize(buf, header.tensors[gguf_name])
    if arch == "llama" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
      w = _unpermute_rows(w, cfg.num_heads if hf_name.endswith("q_proj.weight") else cfg.num_kv_heads)
    elif arch in ("gemma2", "gemma3") and "norm.weight" in gguf_name:
      w = w - 1
    return hf_name, w

  workers = threads or min(8, os.cpu_count() or 1)
  items = sorted(present.items(), key=lambda kv: -header.tensors[kv[1]].nbytes)
  with ThreadPoolExecutor(workers) as pool:
    tensors = dict(pool.map(one, items))
  return cfg_dict, tensors


def load_gguf(path: str | os.PathLike, *, dtype=jnp.float32, param_dtype=None) -> CausalLM:
  """A Flax model from a GGUF file (any quantization ``gguf.quants`` dequantizes)."""
  cfg_dict, tensors = read_gguf(path)
  cfg = config_from_hf(cfg_dict)
  return model_from_tensors(cfg, tensors.keys(), tensors.__getitem__, dtype=dtype,
                            param_dtype=param_dtype, source=str(path))
