"""The scorer interface: folder detection, config helpers, and Hugging Face classifiers/score models.

The HF scores are checked against the same torch model called directly (a tiny random DistilBERT
sentiment classifier, and a tiny random Llama saved in safe-rlhf's ``LlamaModelForScore`` layout,
scored at its last token); pickled ``.bin`` checkpoints must be refused without the opt-in.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from elasticity.eval import scorers

TEXTS = ["a great and wonderful film", "bad", "the plot was boring and the acting awful !",
         "i loved it"]


def _tokenizer(out_dir):
  """A word-level HF tokenizer over the words of TEXTS, saved in ``out_dir``."""
  import tokenizers
  import transformers
  words = sorted({w for t in TEXTS for w in t.split()})
  vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                              pad_token="[PAD]")
  fast.save_pretrained(str(out_dir))
  return fast, len(vocab)


def _ids(fast, text):
  import torch
  return torch.tensor([fast(text)["input_ids"]])


def _distilbert(tmp_path, *, safe=True, id2label=None):
  import torch
  import transformers
  torch.manual_seed(0)
  fast, v = _tokenizer(tmp_path)
  cfg = transformers.DistilBertConfig(
      vocab_size=v, dim=32, hidden_dim=64, n_layers=2, n_heads=2, max_position_embeddings=64,
      num_labels=2, id2label=id2label or {0: "NEGATIVE", 1: "POSITIVE"}, pad_token_id=0)
  model = transformers.DistilBertForSequenceClassification(cfg).eval()
  model.save_pretrained(str(tmp_path))
  if not safe:  # transformers 5 writes safetensors only: the old pickled layout, by hand
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "model.safetensors").unlink()
  return model, fast


def test_distilbert_probability_matches_torch(tmp_path):
  import torch
  model, fast = _distilbert(tmp_path)
  s = scorers.load_scorer(tmp_path, batch_size=3)          # 2 batches, padded
  got = s.score(TEXTS)
  with torch.no_grad():
    ref = [torch.softmax(model(_ids(fast, t)).logits.double(), -1)[0, 1].item() for t in TEXTS]
  assert got.dtype == np.float64 and got.shape == (4,)
  np.testing.assert_allclose(got, ref, atol=1e-6)
  # The positive index can be chosen: label 0 gives 1 − P(label 1).
  s0 = scorers.load_scorer(tmp_path, positive_label="NEGATIVE")
  np.testing.assert_allclose(s0.score(TEXTS), 1 - np.asarray(ref), atol=1e-6)


def test_ambiguous_labels_need_positive_label(tmp_path):
  _distilbert(tmp_path, id2label={0: "LABEL_0", 1: "LABEL_1"})
  with pytest.raises(ValueError, match="scorer.positive_label"):
    scorers.load_scorer(tmp_path)
  assert scorers.load_scorer(tmp_path, positive_label=1).score(["bad"]).shape == (1,)


def test_pickled_bin_refused_without_opt_in(tmp_path):
  import torch
  model, fast = _distilbert(tmp_path, safe=False)
  assert list(tmp_path.glob("*.bin")) and not list(tmp_path.glob("*.safetensors"))
  with pytest.raises(ValueError, match="allow_pickle"):
    scorers.load_scorer(tmp_path)
  s = scorers.load_scorer(tmp_path, allow_pickle=True)
  with torch.no_grad():
    ref = torch.softmax(model(_ids(fast, TEXTS[0])).logits.double(), -1)[0, 1].item()
  np.testing.assert_allclose(s.score(TEXTS[:1]), [ref], atol=1e-6)


class _LlamaModelForScore:
  """safe-rlhf's layout, built here: ``model`` (a LlamaModel) + ``score_head`` (Linear, no bias)."""

  def __init__(self, cfg):
    import torch
    import transformers
    torch.manual_seed(1)
    self.model = transformers.LlamaModel(cfg).eval()
    self.score_head = torch.nn.Linear(cfg.hidden_size, 1, bias=False)

  def end_score(self, ids):
    import torch
    with torch.no_grad():
      h = self.model(input_ids=ids).last_hidden_state
      return self.score_head(h[:, -1]).double()[0, 0].item()

  def save(self, out_dir, cfg):
    import safetensors.torch
    state = {f"model.{k}": v.contiguous() for k, v in self.model.state_dict().items()}
    state["score_head.weight"] = self.score_head.weight.detach().contiguous()
    safetensors.torch.save_file(state, str(out_dir / "model.safetensors"))
    d = cfg.to_dict()
    d.update(architectures=["LlamaModelForScore"], score_dim=1, bias=False, score_type="cost")
    (out_dir / "config.json").write_text(json.dumps(d))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_safe_rlhf_llama_score_model_matches_torch(tmp_path, sign):
  import transformers
  fast, v = _tokenizer(tmp_path)
  cfg = transformers.LlamaConfig(vocab_size=v, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=64, pad_token_id=0)
  ref_model = _LlamaModelForScore(cfg)
  ref_model.save(tmp_path, cfg)
  s = scorers.scorer_from_config(scorers.scorer_section(path=str(tmp_path), sign=sign,
                                                        batch_size=4))
  assert s.safe_rlhf and s.num_labels == 1
  ref = [sign * ref_model.end_score(_ids(fast, t)) for t in TEXTS]   # unpadded, one at a time
  np.testing.assert_allclose(s.score(TEXTS), ref, atol=1e-5)       # padded batch of 4


def test_safe_rlhf_score_head_with_bias_refused(tmp_path):
  import transformers
  _, v = _tokenizer(tmp_path)
  cfg = transformers.LlamaConfig(vocab_size=v, hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=1, num_attention_heads=2,
                                 max_position_embeddings=32)
  _LlamaModelForScore(cfg).save(tmp_path, cfg)
  raw = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**raw, "bias": True}))
  with pytest.raises(ValueError, match="'bias'"):
    scorers.load_scorer(tmp_path)


def test_unknown_folder_errors_name_the_folder(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
    scorers.load_scorer(tmp_path / "nope")
  with pytest.raises(ValueError, match=f"{tmp_path}: not a scorer folder: no config.json"):
    scorers.load_scorer(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
  with pytest.raises(ValueError, match=f"{tmp_path}: not a scorer folder"):
    scorers.load_scorer(tmp_path)


def test_require_scorer_names_the_config_key(tmp_path):
  section = scorers.scorer_section()
  with pytest.raises(scorers.ScorerConfigError, match=r"set config\.eval\.scorer\.path=DIR"):
    scorers.require_scorer(section, "config.eval.scorer.path")
  with pytest.raises(scorers.ScorerConfigError, match=r"set config\.eval\.scorer\.path=DIR"):
    scorers.require_scorer(None, "config.eval.scorer.path")
  section.path = str(tmp_path)
  with pytest.raises(scorers.ScorerConfigError, match=r"config\.safety\.path="):
    scorers.require_scorer(section, "config.safety.path")
  with pytest.raises(scorers.ScorerConfigError, match="unknown key 'sgn'"):
    scorers.scorer_section(sgn=-1)
  assert set(scorers.scorer_section()) == set(scorers.SECTION_KEYS)


def test_package_import_loads_neither_torch_nor_jax():
  import subprocess
  import sys
  code = ("import sys, elasticity.eval as e; from elasticity.eval import scorer_section; "
          "scorer_section(); print('torch' in sys.modules, 'jax' in sys.modules)")
  from elasticity import paths
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=paths.PROJECT_ROOT)
  assert out.stdout.split() == ["False", "False"]
