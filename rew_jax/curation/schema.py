"""Response schemas of the curation prompts, and a tolerant parser for what LLMs send back.

Each prompt kind has a pydantic model. Its JSON schema is handed to backends that support
structured output (Gemini `response_schema`, OpenAI-compatible `json_schema`); the local
Gemma sampler has no constrained decoding, so every reply, from every backend, goes through
`parse()`:

  * the JSON object may sit inside a ```json code fence or between sentences of prose;
  * extra keys are ignored (models add "confidence", "notes", ...);
  * wrong types, missing keys, over-long strings, too many QA pairs, truncated or absent JSON
    raise `ParseError` with a short machine-readable `reason` (counted in the report) and a
    human-readable message.

Limits are enforced in validators rather than in the schema so that the schema stays within
the subset every structured-output API accepts.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any, TypeVar

import pydantic

# Bounds on what one reply may carry. A reply over MAX_REPLY_CHARS is rejected unread.
MAX_REPLY_CHARS = 64_000
MAX_NAME_CHARS = 200
MAX_TEXT_CHARS = 2_000
MAX_QA_PAIRS = 10
MAX_QA_CHARS = 400

# Answers that mean "I do not know", in any case; the runner records them as abstentions.
ABSTAIN_NAMES = frozenset({
    "", "none", "unknown", "n/a", "na", "null", "no entity", "not sure", "cannot tell",
    "unsure", "none of the above", "none of these", "no match",
})
_REFUSAL = re.compile(
    r"\b(i\s*(?:am|'m)\s*(?:sorry|unable|not able)|i\s*(?:can(?:no|')t|cannot|won't|will not)|"
    r"as an ai|unable to (?:help|assist|identify)|against (?:my|the) (?:policy|guidelines))",
    re.IGNORECASE)
_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
# Control characters other than tab and newline never belong in record text.
_CONTROL = dict.fromkeys(c for c in range(32) if c not in (9, 10))


class ParseError(ValueError):
  """A reply that is not a valid response of the expected kind."""

  def __init__(self, reason: str, message: str):
    super().__init__(f"{reason}: {message}")
    self.reason = reason
    self.message = message


def clean_text(text: str, limit: int) -> str:
  """NFC, no control characters, trimmed; raises ValueError when longer than `limit`."""
  text = unicodedata.normalize("NFC", text).translate(_CONTROL).strip()
  if len(text) > limit:
    raise ValueError(f"is {len(text)} characters long (limit {limit})")
  return text


class _Response(pydantic.BaseModel):
  model_config = pydantic.ConfigDict(extra="ignore", strict=True)


class QAPair(_Response):
  question: str
  answer: str

  @pydantic.field_validator("question", "answer")
  @classmethod
  def _bounded(cls, v: str) -> str:
    v = clean_text(v, MAX_QA_CHARS)
    if not v:
      raise ValueError("is empty")
    return v


def _check_qa(v: list[QAPair]) -> list[QAPair]:
  if len(v) > MAX_QA_PAIRS:
    raise ValueError(f"has {len(v)} pairs (limit {MAX_QA_PAIRS})")
  return v


class VerifyResponse(_Response):
  """(a) Verify or correct the entity, given the caption and the candidates."""
  entity_name: str
  justification: str = ""

  @pydantic.field_validator("entity_name")
  @classmethod
  def _name(cls, v: str) -> str:
    return clean_text(v, MAX_NAME_CHARS)

  @pydantic.field_validator("justification")
  @classmethod
  def _text(cls, v: str) -> str:
    return clean_text(v, MAX_TEXT_CHARS)


class RationaleResponse(_Response):
  """(b) Why the image shows the entity, from what is visible."""
  rationale: str

  @pydantic.field_validator("rationale")
  @classmethod
  def _text(cls, v: str) -> str:
    return clean_text(v, MAX_TEXT_CHARS)


class QAResponse(_Response):
  """(c) Question–answer pairs about attributes of the image."""
  qa: list[QAPair]

  _qa = pydantic.field_validator("qa")(_check_qa)


class OneCallResponse(VerifyResponse):
  """(a)+(b)+(c) in one structured reply."""
  rationale: str = ""
  qa: list[QAPair] = []

  @pydantic.field_validator("rationale")
  @classmethod
  def _rationale(cls, v: str) -> str:
    return clean_text(v, MAX_TEXT_CHARS)

  _qa = pydantic.field_validator("qa")(_check_qa)


class DirectResponse(VerifyResponse):
  """(d) The ablation: the entity from the image alone (same shape as VerifyResponse)."""


SCHEMAS: dict[str, type[_Response]] = {
    "verify": VerifyResponse, "rationale": RationaleResponse, "qa": QAResponse,
    "one_call": OneCallResponse, "direct": DirectResponse,
}
Model = TypeVar("Model", bound=_Response)


def json_schema(model: type[pydantic.BaseModel]) -> dict[str, Any]:
  """The model's JSON schema with nested definitions inlined (some APIs reject $ref)."""
  schema = model.model_json_schema()
  defs = schema.pop("$defs", {})

  def inline(node):
    if isinstance(node, dict):
      if "$ref" in node:
        return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
      return {k: inline(v) for k, v in node.items() if k != "title"}
    if isinstance(node, list):
      return [inline(v) for v in node]
    return node

  return inline(schema)


def is_refusal(text: str) -> bool:
  """Whether a reply without JSON reads as the model declining to answer."""
  return bool(_REFUSAL.search(text[:2000]))


def is_abstention(name: str) -> bool:
  return name.strip().strip(".!").casefold() in ABSTAIN_NAMES


def extract_json(text: str) -> Any:
  """The first JSON object in `text`: inside a code fence, bare, or amid prose."""
  bodies = [m.group(1) for m in _FENCE.finditer(text)] + [text]
  decoder = json.JSONDecoder()
  for body in bodies:
    start = body.find("{")
    while start != -1:
      try:
        value, _ = decoder.raw_decode(body, start)
        if isinstance(value, dict):
          return value
      except (json.JSONDecodeError, RecursionError):  # Absurd nesting is not an answer.
        pass
      start = body.find("{", start + 1)
  if "{" in text:
    # More opening than closing braces: the reply was cut off (length limit, dropped stream).
    if text.count("{") > text.count("}"):
      raise ParseError("truncated_json", f"the reply's JSON object is cut off: {text[-80:]!r}")
    raise ParseError("invalid_json", f"the reply's JSON does not parse: {text[:120]!r}")
  if is_refusal(text):
    raise ParseError("refusal", f"the model declined: {text[:120]!r}")
  raise ParseError("no_json", f"no JSON object in the reply: {text[:120]!r}")


def parse(text: Any, model: type[Model]) -> Model:
  """Parses one reply into `model`; any problem is a ParseError with a reason."""
  if not isinstance(text, str):
    raise ParseError("not_text", f"the reply is {type(text).__name__}, not text")
  if not text.strip():
    raise ParseError("empty", "the reply is empty")
  if len(text) > MAX_REPLY_CHARS:
    raise ParseError("too_long", f"the reply has {len(text)} characters "
                     f"(limit {MAX_REPLY_CHARS})")
  data = extract_json(text)
  try:
    return model.model_validate(data)
  except pydantic.ValidationError as e:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(root)"
    kind = first["type"]
    reason = ("missing_field" if kind == "missing" else
              "too_long" if kind == "value_error" and "limit" in first["msg"] else
              "bad_value" if kind == "value_error" else "wrong_type")
    raise ParseError(reason, f"{where}: {first['msg']}") from None
