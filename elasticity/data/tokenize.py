"""Tokenization with SFT masks: records -> ``input_ids`` + ``loss_mask``, truncation reported.

Masks: ``loss_mask[t] = 1`` iff token ``t`` is scored, i.e. predicted from tokens ``< t`` (the loss
and the compression rate γ read logits at ``t - 1``). Only response tokens are scored, plus the
end of the response when ``add_eos`` (EOS, or the chat template's end-of-turn text). Token 0 is never
scored: nothing precedes it, and in a packed row the token before it belongs to another example.

Tokenization is joint: ``prompt + response (+ suffix)`` is encoded in one piece, as the model reads
it, and the prompt/response boundary is the longest common prefix of that encoding with the prompt's
own encoding. When a token straddles the boundary (rare; e.g. BPE merging the prompt's last
characters with the response's first), it is scored with the response and the example is listed in
``report.boundary_merges``. A preference pair's chosen and rejected sequences share one prompt
encoding (the shorter of the two boundaries), so DPO compares them against the same prompt tokens.

Truncation to ``max_length`` follows an explicit policy:

* ``"truncate_prompt_left"``: drop prompt tokens from the left (BOS is kept); if the response alone
  still does not fit, cut it on the right too (``response_truncated``).
* ``"truncate_response"``: cut the response on the right; an example whose prompt leaves no room
  for one response token is dropped.
* ``"drop"``: drop examples that do not fit.
* ``"error"``: raise a ``DataError`` naming the example.

With an empty prompt and no BOS the first response token sits at position 0 and cannot be scored;
such examples are listed in ``report.first_token_unscored`` (their ``response_bytes`` then cover one
token more than is scored: give them a BOS, or a prompt, when measuring bits/byte).

Each example keeps its response text and its UTF-8 byte count (``response_bytes``) for bits/byte;
for an example whose response was cut, ``response_truncated`` says that count covers more text
than the scored tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from elasticity.data.errors import DataError
from elasticity.data.formats import Formatted, format_example
from elasticity.data.records import utf8_bytes, where
from elasticity.tokenizers import as_tokenizer

POLICIES = ("truncate_prompt_left", "truncate_response", "drop", "error")


@dataclass(frozen=True)
class TokenizedExample:
  """One tokenized example.

  Attributes:
    input_ids: int32 ``[L]``.
    loss_mask: int32 ``[L]``; 1 on scored (response) tokens.
    index: position of the source record in the list given to ``tokenize``.
    prompt_len: tokens before the response (BOS and prompt, after truncation).
    response: the response text as formatted.
    response_bytes: ``utf8_bytes(response)``.
    prompt_truncated, response_truncated: what truncation did.
  """
  input_ids: np.ndarray
  loss_mask: np.ndarray
  index: int
  prompt_len: int
  response: str
  response_bytes: int
  prompt_truncated: bool = False
  response_truncated: bool = False

  @property
  def length(self) -> int:
    return int(self.input_ids.shape[0])

  @property
  def n_loss_tokens(self) -> int:
    return int(self.loss_mask.sum())


@dataclass(frozen=True)
class PreferencePair:
  """Chosen and rejected sequences of one record, with identical prompt tokens."""
  chosen: TokenizedExample
  rejected: TokenizedExample

  @property
  def index(self) -> int:
    return self.chosen.index


@dataclass
class TokenizeReport:
  """What tokenization did to the data: every truncated or dropped example, by index."""
  policy: str
  max_length: int | None
  n_examples: int = 0
  n_kept: int = 0
  prompt_truncated: list[int] = field(default_factory=list)
  response_truncated: list[int] = field(default_factory=list)
  dropped: list[int] = field(default_factory=list)
  boundary_merges: list[int] = field(default_factory=list)
  first_token_unscored: list[int] = field(default_factory=list)

  def __str__(self) -> str:
    return (f"tokenized {self.n_examples} examples (max_length={self.max_length}, "
            f"policy={self.policy!r}): kept {self.n_kept}, dropped {len(self.dropped)}, "
            f"prompt truncated {len(self.prompt_truncated)}, response truncated "
            f"{len(self.response_truncated)}, boundary merges {len(self.boundary_merges)}, "
            f"first response token unscored {len(self.first_token_unscored)}")


class TokenizedDataset(list):
  """A list of ``TokenizedExample`` (or ``PreferencePair``) with the ``TokenizeReport``."""

  def __init__(self, items=(), *, report: TokenizeReport):
    super().__init__(items)
    self.report = report


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
  n = min(len(a), len(b))
  i = 0
  while i < n and a[i] == b[i]:
    i += 1
  return i


@dataclass
class _Options:
  tokenizer: object
  template: str
  max_length: int | None
  policy: str
  add_bos: bool | None
  add_eos: bool
  system: str | None

  def __post_init__(self):
    if self.policy not in POLICIES:
      raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
    if self.max_length is not None and self.max_length < 2:
      raise ValueError(f"max_length must be >= 2, got {self.max_length}")
    if self.add_eos and self.template != "chat" and self.tokenizer.eos_id is None:
      raise ValueError("the tokenizer has no EOS token; pass add_eos=False")
    if self.add_bos and self.tokenizer.bos_id is None:
      raise ValueError("the tokenizer has no BOS token; pass add_bos=False or None")

  def bos(self, f: Formatted) -> list[int]:
    want = self.tokenizer.add_bos_token if self.add_bos is None else self.add_bos
    if want and not f.has_bos_text and self.tokenizer.bos_id is not None:
      return [int(self.tokenizer.bos_id)]
    return []

  def body(self, f: Formatted) -> tuple[list[int], list[int]]:
    """(encoding of prompt alone, encoding of prompt + response [+ suffix]) [+ EOS id]."""
    tok = self.tokenizer
    p = tok.encode(f.prompt) if f.prompt else []
    tail = f.suffix if self.add_eos else ""
    full = tok.encode(f.prompt + f.response + tail)
    if self.add_eos and not f.suffix:
      full = full + [int(tok.eos_id)]
    return p, full


def _fit(prompt: list[int], responses: list[list[int]], n_bos: int, opts: _Options,
         example: dict, position: int, key: str
         ) -> tuple[list[int], list[list[int]], bool, list[bool]] | None:
  """Apply the truncation policy; ``None`` means dropped."""
  limit = opts.max_length
  need = n_bos + len(prompt) + max(len(r) for r in responses)
  if limit is None or need <= limit:
    return prompt, responses, False, [False] * len(responses)
  if opts.policy == "error":
    file, rec = where(example, position)
    raise DataError(file, rec, key, f"{need} tokens, more than max_length={limit} "
                    "(truncation policy 'error')")
  if opts.policy == "drop":
    return None
  if opts.policy == "truncate_response":
    room = limit - n_bos - len(prompt)
    if room < 1:
      return None
    return prompt, [r[:room] for r in responses], False, [len(r) > room for r in responses]
  cut = min(need - limit, len(prompt))
  prompt = prompt[cut:]
  room = limit - n_bos - len(prompt)
  return prompt, [r[:room] for r in responses], cut > 0, [len(r) > room for r in responses]


def _example(bos: list[int], prompt: list[int], response: list[int], f: Formatted, index: int,
             prompt_cut: bool, response_cut: bool, example: dict, key: str) -> TokenizedExample:
  ids = np.asarray(bos + prompt + response, dtype=np.int32)
  if ids.size == 0:
    file, rec = where(example, index)
    raise DataError(file, rec, key, "nothing to tokenize (empty prompt and response, no BOS/EOS)")
  mask = np.zeros(ids.shape, np.int32)
  mask[len(bos) + len(prompt):] = 1
  mask[0] = 0
  return TokenizedExample(ids, mask, index, len(bos) + len(prompt), f.response,
                          utf8_bytes(f.response), prompt_cut, response_cut)


def tokenize(examples: Sequence[dict], tokenizer, *, template: str = "plain",
             max_length: int | None = None, policy: str = "truncate_prompt_left",
             add_bos: bool | None = None, add_eos: bool = True, response_key: str = "response",
             system: str | None = None) -> TokenizedDataset:
  """Tokenize instruction/response (or text) records for SFT and compression measurement.

  Args:
    examples: records (``prompt`` + ``response_key``, or ``text``).
    tokenizer: an ``elasticity.tokenizers.Tokenizer`` or a ``transformers`` tokenizer (wrapped).
    template: ``"chat"``, ``"alpaca"`` or ``"plain"`` (see ``formats``).
    max_length: longest sequence kept (``None``: no limit).
    policy: truncation policy (module docstring).
    add_bos: ``None`` follows the tokenizer's convention (``add_bos_token``); BOS is never doubled
      when a chat template writes it.
    add_eos: score an end of response: EOS for ``alpaca``/``plain``, the template's end-of-turn
      text for ``chat``.
    response_key: which field is the response.
    system: system message for ``chat``.

  Returns:
    The kept examples (``index`` = position in ``examples``) with ``.report``.
  """
  tokenizer = as_tokenizer(tokenizer)
  opts = _Options(tokenizer, template, max_length, policy, add_bos, add_eos, system)
  report = TokenizeReport(policy, max_length, n_examples=len(examples))
  out = []
  for i, ex in enumerate(examples):
    f = format_example(ex, template, tokenizer, response_key=response_key, position=i,
                       system=system)
    bos = opts.bos(f)
    p, full = opts.body(f)
    b = _lcp(p, full)
    if b < len(p):
      report.boundary_merges.append(i)
    fitted = _fit(full[:b], [full[b:]], len(bos), opts, ex, i, response_key)
    if fitted is None:
      report.dropped.append(i)
      continue
    prompt, (resp,), p_cut, (r_cut,) = fitted
    out.append(_example(bos, prompt, resp, f, i, p_cut, r_cut, ex, response_key))
    if not bos and not prompt and resp:
      report.first_token_unscored.append(i)
    if p_cut:
      report.prompt_truncated.append(i)
    if r_cut:
      report.response_truncated.append(i)
  report.n_kept = len(out)
  return TokenizedDataset(out, report=report)


def tokenize_preference(examples: Sequence[dict], tokenizer, *, template: str = "plain",
                        max_length: int | None = None, policy: str = "truncate_prompt_left",
                        add_bos: bool | None = None, add_eos: bool = True,
                        system: str | None = None) -> TokenizedDataset:
  """Tokenize ``{"prompt", "chosen", "rejected"}`` records into ``PreferencePair``s.

  Both sequences of a pair get the same prompt tokens (and the same prompt truncation); a pair is
  dropped if either sequence would be. Options as in ``tokenize``.
  """
  tokenizer = as_tokenizer(tokenizer)
  opts = _Options(tokenizer, template, max_length, policy, add_bos, add_eos, system)
  report = TokenizeReport(policy, max_length, n_examples=len(examples))
  out = []
  for i, ex in enumerate(examples):
    fc = format_example(ex, template, tokenizer, response_key="chosen", position=i, system=system)
    fr = format_example(ex, template, tokenizer, response_key="rejected", position=i,
                        system=system)
    if fc.prompt != fr.prompt:
      file, rec = where(ex, i)
      raise DataError(file, rec, "rejected", "the template renders a different prompt for "
                      "chosen and rejected")
    bos = opts.bos(fc)
    p, full_c = opts.body(fc)
    _, full_r = opts.body(fr)
    b = min(_lcp(p, full_c), _lcp(p, full_r))
    if b < len(p):
      report.boundary_merges.append(i)
    fitted = _fit(p[:b], [full_c[b:], full_r[b:]], len(bos), opts, ex, i, "chosen")
    if fitted is None:
      report.dropped.append(i)
      continue
    prompt, (rc, rr), p_cut, (c_cut, r_cut) = fitted
    out.append(PreferencePair(_example(bos, prompt, rc, fc, i, p_cut, c_cut, ex, "chosen"),
                              _example(bos, prompt, rr, fr, i, p_cut, r_cut, ex, "rejected")))
    if not bos and not prompt and (rc or rr):
      report.first_token_unscored.append(i)
    if p_cut:
      report.prompt_truncated.append(i)
    if c_cut or r_cut:
      report.response_truncated.append(i)
  report.n_kept = len(out)
  return TokenizedDataset(out, report=report)
