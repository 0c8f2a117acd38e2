"""The direct GGUF reader against independent references: ``gguf.GGUFReader``, transformers' GGUF path
(``load_gguf_checkpoint`` / ``from_pretrained(gguf_file=...)``), and the HF models tiny GGUF files
are written from (with llama.cpp's q/k permutation and Gemma's ``1 + w`` norms, as its converter does).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from elasticity.convert import gguf as ggufr
from elasticity.convert import load_config, load_pretrained

from hf_reference import tiny_hf_model, valid_logit_error
from tolerances import f32_tol, stack_depth

gguf = pytest.importorskip("gguf")


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
  """convert_hf_to_gguf.py's LlamaModel.permute: rotate-half rows → interleaved pairs, per head."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, path, arch: str, quantize: bool) -> None:
  """A GGUF file of a tiny HF model, as llama.cpp's converter lays it out (Q8_0 matrices if asked)."""
  c = model.config
  hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(c.num_hidden_layers)
  w.add_context_length(c.max_position_embeddings)
  w.add_embedding_length(c.hidden_size)
  w.add_feed_forward_length(c.intermediate_size)
  w.add_head_count(c.num_attention_heads)
  w.add_head_count_kv(c.num_key_value_heads)
  w.add_layer_norm_rms_eps(c.rms_norm_eps)
  w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]))
  w.add_vocab_size(c.vocab_size)
  if arch == "llama":
    w.add_rope_dimension_count(hd)
  if arch.startswith("gemma"):
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_sliding_window(c.sliding_window)
  w.add_bos_token_id(1)
  w.add_eos_token_id(2)
  arch_id = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
  names = gguf.get_tensor_name_map(arch_id, c.num_hidden_layers)
  for name, t in model.state_dict().items():
    if name == "lm_head.weight" and c.tie_word_embeddings:
      continue
    base, suffix = name.rsplit(".", 1)
    a = t.detach().numpy().astype(np.float32)
    if arch == "llama" and name.endswith("q_proj.weight"):
      a = _llama_cpp_permute(a, c.num_attention_heads)
    if arch == "llama" and name.endswith("k_proj.weight"):
      a = _llama_cpp_permute(a, c.num_key_value_heads)
    if arch.startswith("gemma") and "norm.weight" in name:
      a = a + 1
    gname = f"{names.get_name(base)}.{suffix}"
    if quantize and a.ndim == 2:
      q = gguf.GGMLQuantizationType.Q8_0
      w.add_tensor(gname, gguf.quants.quantize(a, q), raw_dtype=q)   # shape: the bytes'
    else:
      w.add_tensor(gname, a)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


CASES = {"smollm2": "llama", "llama3": "llama", "qwen2_untied": "qwen2", "gemma2": "gemma2"}


@pytest.mark.parametrize("variant", ["smollm2", "qwen2_untied"])
def test_float32_gguf_gives_the_source_model(variant, tmp_path):
  """Unquantized: the GGUF round trip (permutation, names, tying) gives the HF model's own logits."""
  ref = tiny_hf_model(variant)
  path = tmp_path / "m.gguf"
  write_gguf(ref, path, CASES[variant], quantize=False)
  err, got = valid_logit_error(ref, load_pretrained(path), [9, 4], "right")
  c = ref.config   # as test_models_parity: 6·√(96·stack_depth(3))·u·max|logit| ≈ 5e-5 (was 1e-4)
  tol = f32_tol(max(c.hidden_size, c.intermediate_size), stack_depth(c.num_hidden_layers), margin=6)
  assert err < tol * np.abs(got).max(), f"{variant}: max abs logit error {err:.2e}"


@pytest.mark.parametrize("variant", sorted(CASES))
def test_quantized_gguf_matches_transformers_gguf_path(variant, tmp_path):
  import transformers
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
  src = tiny_hf_model(variant)
  path = tmp_path / "m.gguf"
  write_gguf(src, path, CASES[variant], quantize=True)
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager").eval()
  want = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=ref)["tensors"]
  cfg_dict, got = ggufr.read_gguf(path)
  assert sorted(got) == sorted(k for k in want if not (k == "lm_head.weight" and ref.config.tie_word_embeddings))
  for k, v in got.items():
    assert v.dtype == np.float32
    np.testing.assert_array_equal(v.view(np.uint32), want[k].numpy().view(np.uint32), err_msg=k)
  model = load_pretrained(path)
  assert model.config == load_config(path)
  assert model.config.tie_embeddings == ref.config.tie_word_embeddings
  err, got = valid_logit_error(ref, model, [9, 4], "right")
  c = ref.config   # the same dequantized weights on both sides: the float32 parity bound of test_models_parity
  tol = f32_tol(max(c.hidden_size, c.intermediate_size), stack_depth(c.num_hidden_layers), margin=6)
  assert err < tol * np.abs(got).max(), f"{variant}: max abs logit error {err:.2e}"


def test_header_matches_gguf_reader(smollm2_gguf):
  """Metadata and tensor table of the real SmolLM2 file equal ``gguf.GGUFReader``'s."""
  header = ggufr.read_header(smollm2_gguf)
  reader = gguf.GGUFReader(str(smollm2_gguf))
  assert header.version == 3
  assert list(header.metadata) == [k for k in reader.fields if not k.startswith("GGUF.")]
  for key, field in reader.fields.items():
    if key.startswith("GGUF."):
      continue
    want = field.contents()
    got = header.metadata[key]
    if isinstance(want, float):
      assert np.float32(got) == np.float32(want), key
    else:
      assert got == want, key
  assert list(header.tensors) == [t.name for t in reader.tensors]
  for t in reader.tensors:
    info = header.tensors[t.name]
    assert info.shape == tuple(int(d) for d in reversed(t.shape)), t.name
    assert info.qtype == t.tensor_type and info.offset == t.data_offset and info.nbytes == t.n_bytes
  for t in reader.tensors[:12]:   # one of each kind (Q8_0 embedding, F32 norms, Q4_1 matrices)
    got = ggufr._dequantize(ggufr._open(header.path), header.tensors[t.name])
    np.testing.assert_array_equal(got.view(np.uint32),
                                  gguf.quants.dequantize(t.data, t.tensor_type).view(np.uint32))


def test_bad_files_are_named(tmp_path):
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"GGML" + b"\0" * 40)
  with pytest.raises(ValueError, match="bad.gguf: not a GGUF file"):
    ggufr.read_header(bad)
  src = tiny_hf_model("smollm2")
  good = tmp_path / "good.gguf"
  write_gguf(src, good, "llama", quantize=False)
  cut = tmp_path / "cut.gguf"
  cut.write_bytes(good.read_bytes()[:-1000])
  with pytest.raises(ValueError, match="cut.gguf: tensor .* runs past the end"):
    ggufr.read_header(cut)
  cut.write_bytes(good.read_bytes()[:200])
  with pytest.raises(ValueError, match="cut.gguf: truncated"):
    ggufr.read_header(cut)


@pytest.mark.slow
def test_smollm2_tensors_are_bitwise_transformers(smollm2_gguf):
  """The real Q4_1 file: every dequantized tensor equals transformers' bit for bit (~1 min: its path)."""
  import transformers
  from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
  cfg_dict, got = ggufr.read_gguf(smollm2_gguf)
  # The model transformers maps tensor names with is built from our reading of the config, which
  # must equal transformers' own (the last assertion): one parse of the file instead of two.
  hf_cfg = dict(cfg_dict)
  hf_cfg = transformers.AutoConfig.for_model(hf_cfg.pop("model_type"), **hf_cfg)
  with torch.device("meta"):
    meta = transformers.AutoModelForCausalLM.from_config(hf_cfg)
  parsed = load_gguf_checkpoint(str(smollm2_gguf), return_tensors=True, model_to_load=meta)
  want = parsed["tensors"]
  assert sorted(got) == sorted(want)
  for k, v in want.items():
    np.testing.assert_array_equal(got[k].view(np.uint32), v.numpy().view(np.uint32), err_msg=k)
  # the config: transformers' reading of the same metadata, field for field
  assert {k: v for k, v in cfg_dict.items()} == {**dict(parsed["config"])}
