"""Prompt formats: how a record becomes ``prompt text + response text (+ suffix)``.

Templates:

* ``"chat"``: the tokenizer's own chat template. Messages are the record's ``messages`` (if any) or
  one user turn with ``prompt``; the response is the assistant turn. Message contents are stripped of
  surrounding whitespace, as chat data conventionally is. The template's end-of-turn text after the
  response (e.g. ``"<|im_end|>\\n"``) is returned as ``suffix``.
* ``"alpaca"``: the Stanford Alpaca template (with or without ``### Input:``), from the record's
  ``instruction``/``input`` when present, else ``prompt`` as the instruction.
* ``"plain"``: ``prompt + response`` as they are (continuation; HH-RLHF's own dialogue format).

Records of kind ``"text"`` (only ``text``) format as an empty prompt and ``response = text``.
"""

from __future__ import annotations

from dataclasses import dataclass

from elasticity.data.errors import DataError
from elasticity.data.records import text_field, where
from elasticity.tokenizers import as_tokenizer

TEMPLATES = ("chat", "alpaca", "plain")

ALPACA_PROMPT_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:")
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Response:")


@dataclass(frozen=True)
class Formatted:
  """A record as text: ``prompt + response + suffix`` is what the model reads.

  Attributes:
    prompt: everything before the response (template text included).
    response: the response exactly as it appears in the rendered text; the only part scored.
    suffix: text the template writes after the response (chat end-of-turn); ``""`` otherwise.
    has_bos_text: the rendered prompt already starts with the tokenizer's BOS token text.
  """
  prompt: str
  response: str
  suffix: str = ""
  has_bos_text: bool = False


def _text(example: dict, key: str, position: int, allow_empty: bool) -> str:
  file, rec = where(example, position)
  if key not in example:
    raise DataError(file, rec, key, "missing field")
  return text_field(example[key], file=file, record=rec, field=key, allow_empty=allow_empty)


def alpaca_prompt(instruction: str, input_text: str = "") -> str:
  """The Stanford Alpaca prompt, with the ``### Input:`` block only when ``input_text`` is set."""
  if input_text.strip():
    return ALPACA_PROMPT_INPUT.format(instruction=instruction, input=input_text)
  return ALPACA_PROMPT_NO_INPUT.format(instruction=instruction)


def format_example(example: dict, template: str, tokenizer=None, *, response_key: str = "response",
                   position: int = 0, system: str | None = None,
                   allow_empty: bool = True) -> Formatted:
  """``example`` as ``Formatted`` text under ``template``.

  Args:
    example: a record (``prompt`` + ``response_key``, or ``text``).
    template: ``"chat"``, ``"alpaca"`` or ``"plain"``.
    tokenizer: needed for ``"chat"`` (its template) and to detect BOS text.
    response_key: which field is the response (``"chosen"``/``"rejected"`` for preference pairs).
    position: the example's position in its list, for error messages.
    system: a system message to put first (``"chat"`` only).
    allow_empty: let the response be empty (loaders already enforced their policy).
  """
  if template not in TEMPLATES:
    raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
  file, rec = where(example, position)
  if response_key not in example and "text" in example and "prompt" not in example:
    if template != "plain":
      raise DataError(file, rec, "prompt", f"a text-only record has no prompt for {template!r}")
    return Formatted("", _text(example, "text", position, allow_empty))
  response = _text(example, response_key, position, allow_empty)

  if template == "plain":
    return Formatted(_text(example, "prompt", position, True), response)

  if template == "alpaca":
    if "instruction" in example:
      instruction = _text(example, "instruction", position, False)
      input_text = _text(example, "input", position, True) if "input" in example else ""
    else:
      instruction, input_text = _text(example, "prompt", position, False), ""
    return Formatted(alpaca_prompt(instruction, input_text), response)

  if tokenizer is not None:
    tokenizer = as_tokenizer(tokenizer)
  if tokenizer is None or not tokenizer.has_chat_template:
    raise ValueError("template 'chat' needs a tokenizer with a chat template")
  if "messages" in example:
    messages = example["messages"]
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages):
      raise DataError(file, rec, "messages", "expected a list of {'role', 'content'} strings")
    messages = [{"role": m["role"], "content": m["content"].strip()} for m in messages]
  else:
    messages = [{"role": "user", "content": _text(example, "prompt", position, False).strip()}]
  if system is not None:
    messages = [{"role": "system", "content": system}] + messages
  reply = response.strip()
  prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
  full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": reply}],
                                       add_generation_prompt=False)
  if not full.startswith(prompt):
    raise DataError(file, rec, response_key,
                    "the chat template renders the conversation with the reply so that it does not "
                    "start with the rendered prompt; cannot tell prompt from response")
  rest = full[len(prompt):]
  at = rest.find(reply)
  if at < 0:
    raise DataError(file, rec, response_key,
                    "the chat template changed the reply's text; cannot locate the response")
  bos = tokenizer.bos_token
  return Formatted(prompt + rest[:at], reply, rest[at + len(reply):],
                   has_bos_text=bool(bos) and prompt.startswith(bos))
