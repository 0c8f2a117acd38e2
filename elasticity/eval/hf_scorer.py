"""A local Hugging Face classifier or reward/cost model as a scorer (torch; imported only here).

Loading is safe by default: ``trust_remote_code=False`` always, weights from ``*.safetensors`` only;
a folder whose weights are a pickled PyTorch ``*.bin`` is refused unless ``allow_pickle=True`` (the
config key ``scorer.allow_pickle``), because unpickling runs code from the file.

Two layouts:

- **``AutoModelForSequenceClassification``** (DistilBERT, RoBERTa, Llama… with a ``score``/
  ``classifier`` head). With one logit (``num_labels == 1``) the score is ``sign · logit`` — a
  reward model with ``sign=+1``, a cost model with ``sign=−1``. With several labels the score is
  the softmax probability of the positive label: ``positive_label`` (an index or an ``id2label``
  name), else the one ``id2label`` entry that reads positive (``POSITIVE``, ``pos``, ``LABEL_1`` of
  a 2-label model is *not* guessed).
- **safe-rlhf ``LlamaModelForScore``** (``architectures: ["LlamaModelForScore"]``; the paper's
  ``PKU-Alignment/beaver-7b-v1.0-cost``): a ``LlamaModel`` plus a ``score_head`` linear layer, scored
  at the last non-padding token (safe-rlhf's ``end_scores``). Mapped onto transformers'
  ``LlamaForSequenceClassification`` by renaming ``score_head.*`` → ``score.*`` with
  ``num_labels = score_dim = 1``; no remote code. The cost model expects safe-rlhf's prompt format
  (``"BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:{response}"``): callers format the texts.

Texts are tokenized with the folder's tokenizer (no special tokens added beyond its default),
right-padded, truncated to ``max_length`` tokens, in batches of ``batch_size``; float32 on CPU.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SAFE_RLHF_SCORE = "LlamaModelForScore"
_POSITIVE = re.compile(r"^(pos|positive|label_pos)$", re.IGNORECASE)


def weight_format(path: Path) -> str:
  """``"safetensors"`` or ``"pickle"`` (``*.bin``/``*.pt``/``*.pth``); ``FileNotFoundError`` if none."""
  if any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file():
    return "safetensors"
  if any(p for ext in ("*.bin", "*.pt", "*.pth") for p in path.glob(ext)):
    return "pickle"
  raise FileNotFoundError(f"{path}: no model weights (*.safetensors or pytorch_model*.bin)")


def _positive_index(path: Path, id2label: dict[int, str], positive_label) -> int:
  n = len(id2label)
  if positive_label is None:
    hits = [i for i, name in id2label.items() if _POSITIVE.match(str(name))]
    if len(hits) != 1:
      raise ValueError(f"{path}: cannot tell the positive label from id2label {id2label}; set "
                       f"scorer.positive_label (an index or a label name)")
    return hits[0]
  if isinstance(positive_label, int):
    if not 0 <= positive_label < n:
      raise ValueError(f"{path}: scorer.positive_label={positive_label} is out of range for "
                       f"{n} labels {id2label}")
    return positive_label
  for i, name in id2label.items():
    if str(name) == positive_label:
      return i
  raise ValueError(f"{path}: scorer.positive_label={positive_label!r} is not one of the labels "
                   f"{sorted(id2label.values())}")


class HFScorer:
  """``score(texts)``: ``sign · logit`` (one logit) or P(positive label) (classifiers), float64."""

  kind = "hf"

  def __init__(self, path: str | os.PathLike, *, sign: float = 1.0, positive_label=None,
               allow_pickle: bool = False, batch_size: int = 16, max_length: int = 512):
    import torch
    import transformers

    self.path = path = Path(path)
    if sign not in (1.0, -1.0):
      raise ValueError(f"{path}: scorer.sign must be +1 (reward) or -1 (cost), got {sign!r}")
    if batch_size < 1 or max_length < 1:
      raise ValueError(f"{path}: scorer.batch_size and scorer.max_length must be >= 1, got "
                       f"{batch_size}, {max_length}")
    self.sign, self.batch_size, self.max_length = float(sign), int(batch_size), int(max_length)
    fmt = weight_format(path)
    if fmt == "pickle" and not allow_pickle:
      raise ValueError(
          f"{path}: the weights are a pickled PyTorch checkpoint (*.bin), which can run arbitrary "
          f"code when loaded; refused. Convert it to safetensors, or opt in with allow_pickle=True "
          f"(config key scorer.allow_pickle=True) if you trust the file.")
    raw = json.loads((path / "config.json").read_text(encoding="utf-8"))
    common = dict(trust_remote_code=False, local_files_only=True,
                  use_safetensors=(fmt == "safetensors"), dtype=torch.float32,
                  output_loading_info=True)
    self.safe_rlhf = SAFE_RLHF_SCORE in (raw.get("architectures") or [])
    if self.safe_rlhf:
      if raw.get("bias"):
        raise ValueError(f"{path}: config.json field 'bias' is true: a score head with a bias is "
                         f"not supported by the LlamaForSequenceClassification mapping")
      score_dim = raw.get("score_dim", 1)
      if score_dim != 1:
        raise ValueError(f"{path}: config.json field 'score_dim' is {score_dim}; only 1 is supported")
      config = transformers.LlamaConfig.from_pretrained(str(path), num_labels=1)
      model, info = transformers.LlamaForSequenceClassification.from_pretrained(
          str(path), config=config, key_mapping={r"^score_head\.": "score."}, **common)
    else:
      model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
          str(path), **common)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys",
                                                  "mismatched_keys") and v}
    if bad:
      raise ValueError(f"{path}: the weights do not match the model: {bad}")
    self.model = model.eval()
    self.tokenizer = transformers.AutoTokenizer.from_pretrained(
        str(path), trust_remote_code=False, local_files_only=True)
    self.tokenizer.padding_side = "right"
    if self.tokenizer.pad_token_id is None:
      if self.tokenizer.eos_token_id is None:
        raise ValueError(f"{path}: the tokenizer has neither a pad nor an eos token to pad with")
      self.tokenizer.pad_token = self.tokenizer.eos_token
    if self.model.config.pad_token_id is None:
      self.model.config.pad_token_id = self.tokenizer.pad_token_id
    self.num_labels = int(self.model.config.num_labels)
    self.positive = None
    if self.num_labels > 1:
      id2label = {int(k): v for k, v in self.model.config.id2label.items()}
      self.positive = _positive_index(path, id2label, positive_label)

  def logits(self, texts: Sequence[str]) -> np.ndarray:
    """float64 logits [len(texts), num_labels] (end-of-sequence logits for ``LlamaModelForScore``)."""
    import torch
    if isinstance(texts, str):
      raise TypeError("score(texts): expected a sequence of strings, got one string")
    texts = list(texts)
    for i, t in enumerate(texts):
      if not isinstance(t, str):
        raise TypeError(f"score(texts): text {i} is {type(t).__name__}, expected str")
    out = np.zeros((len(texts), self.num_labels), np.float64)
    with torch.inference_mode():
      for s in range(0, len(texts), self.batch_size):
        enc = self.tokenizer(texts[s:s + self.batch_size], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        mask = enc["attention_mask"]
        if int(mask.sum(1).min()) == 0:
          raise ValueError(f"score(texts): text {s + int(mask.sum(1).argmin())} has no tokens")
        if self.safe_rlhf:
          hidden = self.model.model(input_ids=enc["input_ids"], attention_mask=mask).last_hidden_state
          end = mask.sum(1) - 1                       # right padding: the last real token
          lg = self.model.score(hidden[torch.arange(hidden.shape[0]), end])
        else:
          lg = self.model(**enc).logits
        out[s:s + len(lg)] = lg.double().numpy()
    return out

  def score(self, texts: Sequence[str]) -> np.ndarray:
    lg = self.logits(texts)
    if self.num_labels == 1:
      return self.sign * lg[:, 0]
    z = lg - lg.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p[:, self.positive] / p.sum(axis=1)
