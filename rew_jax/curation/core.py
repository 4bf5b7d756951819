"""The per-record curation logic, shared by the local runner and the Beam pipeline.

    Item (caption, candidates, image) ──prompt──► backend ──reply──► parse/validate
        ──name──► resolver ──► Outcome (status, entity, rationale, QA, counters) ──► RewRecord

Statuses (`rew_jax.records.STATUSES`):
  kept        the answer resolves to the top-1 candidate (the Entity-WebLI label was right)
  corrected   it resolves to another KB entity (another candidate, or a name outside them)
  abstained   the model said it cannot tell ("none") or refused
  unresolved  the reply could not be parsed/validated, the request was rejected, or the name
              matches no KB entity (hallucinated, generic, ambiguous)
  candidate   no LLM: the top-1 candidate (the `top1_candidate` backend)
An undecodable image gets the outcome `bad_image` (`BAD_IMAGE`, not a record status): it is
journaled, so a rerun does not read it again, counted as a skipped input in the report,
and never written as a record. A near-duplicate of an evaluation image (`dedup.py`) gets
`eval_duplicate` (`EVAL_DUPLICATE`) the same way, before any LLM call, and the report
counts it apart.
Only kept/corrected/candidate records carry an entity id. A rationale is kept only with a
resolved entity; QA pairs describe the image and are kept whenever they validate.

Transient failures (429, 5xx, timeouts) are retried with exponential backoff (tenacity),
honouring Retry-After; when the attempts run out the error propagates: the runner then
leaves that record for the next run instead of writing a wrong label.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Sequence

import tenacity

from rew_jax.curation import prompts as prompts_lib
from rew_jax.curation import schema as schema_lib
from rew_jax.curation.backends.base import Backend, RequestRejected, TransientError
from rew_jax.records import Candidate, RewRecord

BAD_IMAGE = "bad_image"  # The outcome of an item whose image does not decode.
EVAL_DUPLICATE = "eval_duplicate"  # ... whose image is a near-copy of an evaluation image.
NOT_RECORDS = (BAD_IMAGE, EVAL_DUPLICATE)  # Outcomes that are journaled, never written.


@dataclasses.dataclass(frozen=True)
class Item:
  """One input line of a candidates shard."""
  shard: str
  index: int  # Line number within the shard (0-based): the record's identity on resume.
  image_id: str
  caption: str
  image_path: str
  candidates: tuple[Candidate, ...]


@dataclasses.dataclass
class Outcome:
  """What curation decided for one item; JSON-able (it is what the journal stores)."""
  index: int
  image_id: str
  status: str
  entity_id: str = ""
  entity_name: str = ""
  rationale: str = ""
  qa: list = dataclasses.field(default_factory=list)  # [{"question", "answer"}]
  answer: str = ""  # The model's raw entity answer.
  reason: str = ""  # How it was resolved ("resolved:alias") or why not ("truncated_json").
  calls: int = 0
  retries: int = 0
  parse_failures: list = dataclasses.field(default_factory=list)  # Reasons, one per failure.
  transient: dict = dataclasses.field(default_factory=dict)  # Kind → count of retried errors.
  input_tokens: int = 0
  output_tokens: int = 0
  latency_s: float = 0.0

  def to_json(self) -> dict[str, Any]:
    # Shallow on purpose (asdict deep-copies): the result is serialised at once.
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  @classmethod
  def from_json(cls, data: dict[str, Any]) -> "Outcome":
    return cls(**data)


@dataclasses.dataclass(frozen=True)
class Settings:
  mode: str = "one_call"
  context: str = ""  # prompts.CONTEXTS; "": the mode's own (full; none for direct).
  num_qa: int = 3
  timeout_s: float = 60.0
  max_attempts: int = 6
  backoff_initial_s: float = 1.0
  backoff_max_s: float = 60.0
  parse_retries: int = 1
  summary_chars: int = 400
  templates: tuple[tuple[str, str], ...] = ()  # Prompt overrides, (kind, template).

  @classmethod
  def from_config(cls, c) -> "Settings":
    fields = {f.name for f in dataclasses.fields(cls)} - {"templates"}
    kw = {k: c[k] for k in fields if k in c}
    prompts = c.get("prompts", None)
    kw["templates"] = tuple(sorted((k, v) for k, v in dict(prompts or {}).items() if v))
    settings = cls(**kw)
    settings.validate()
    return settings

  def validate(self) -> None:
    from rew_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
    if self.mode not in prompts_lib.MODES:
      raise ConfigError(f"curation.mode {self.mode!r} is not one of {prompts_lib.MODES}")
    if not 0 <= self.num_qa <= schema_lib.MAX_QA_PAIRS:
      raise ConfigError(f"curation.num_qa must be in [0, {schema_lib.MAX_QA_PAIRS}]")
    if self.max_attempts < 1 or self.parse_retries < 0 or self.timeout_s <= 0:
      raise ConfigError("curation needs max_attempts >= 1, parse_retries >= 0, timeout_s > 0")
    if self.context and self.context not in prompts_lib.CONTEXTS:
      raise ConfigError(f"curation.context {self.context!r} is not one of "
                        f"{prompts_lib.CONTEXTS} (or empty: the mode's own)")
    if self.mode == "direct" and self.context not in ("", "none"):
      raise ConfigError(f"curation.context {self.context!r} with mode 'direct': a direct "
                        "prompt shows no candidates and no caption (context none)")
    prompts_lib.templates(dict(self.templates), self.prompt_context)

  @property
  def prompt_context(self) -> str:
    """The context the prompts are built with."""
    return self.context or ("none" if self.mode == "direct" else "full")


class RateLimiter:
  """At most `per_s` calls per second across threads (0: unlimited), evenly spaced."""

  def __init__(self, per_s: float = 0.0):
    self.interval = 1.0 / per_s if per_s > 0 else 0.0
    self._next = 0.0
    self._lock = threading.Lock()

  def acquire(self) -> None:
    if not self.interval:
      return
    with self._lock:
      now = time.monotonic()
      slot = max(now, self._next)
      self._next = slot + self.interval
    if slot > now:
      time.sleep(slot - now)

  def succeeded(self) -> None:
    """A call got a reply (adaptive limiters, such as the Beam pipeline's, count these)."""

  def failed(self) -> None:
    """A call failed transiently (429, 5xx, timeout)."""


class _Wait(tenacity.wait.wait_base):
  """Exponential backoff with jitter, but never sooner than the server's Retry-After."""

  def __init__(self, initial: float, maximum: float):
    self.exp = tenacity.wait_exponential_jitter(initial=initial, max=maximum)
    self.maximum = maximum

  def __call__(self, retry_state) -> float:
    wait = self.exp(retry_state)
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    after = getattr(exc, "retry_after", None)
    return min(self.maximum, max(wait, after or 0.0))


class Curator:
  """Curates items with one backend. Thread-safe: the runner calls it from a thread pool."""

  def __init__(self, backend: Backend, kb, settings: Settings,
               limiter: RateLimiter | None = None, sleep=time.sleep):
    self.backend, self.kb, self.s = backend, kb, settings
    self.limiter = limiter or RateLimiter()
    self.templates = prompts_lib.templates(dict(settings.templates), settings.prompt_context)
    self._sleep = sleep  # Tests replace it to keep backoff instant.

  # -- One LLM call: rate limit, retries on transient errors, usage accounting.

  def _call(self, prompt: prompts_lib.Prompt, out: Outcome):
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(self.s.max_attempts),
        wait=_Wait(self.s.backoff_initial_s, self.s.backoff_max_s),
        retry=tenacity.retry_if_exception_type(TransientError),
        sleep=self._sleep, reraise=True)
    for attempt in retrying:
      with attempt:
        if attempt.retry_state.attempt_number > 1:
          out.retries += 1
        self.limiter.acquire()
        out.calls += 1
        try:
          reply = self.backend.generate(prompt, self.s.timeout_s)
        except TransientError as e:
          out.transient[e.kind] = out.transient.get(e.kind, 0) + 1
          self.limiter.failed()
          raise
        self.limiter.succeeded()
    out.input_tokens += reply.input_tokens
    out.output_tokens += reply.output_tokens
    return reply

  def _ask(self, kind: str, out: Outcome, image: bytes, mime: str, image_id: str, **fields):
    """Asks one prompt kind, re-asking on parse failures; → (response or None, last reason)."""
    reason = ""
    for attempt in range(self.s.parse_retries + 1):
      prompt = prompts_lib.build(kind, self.templates, image=image, image_mime=mime,
                                 image_id=image_id, num_qa=self.s.num_qa,
                                 summary_chars=self.s.summary_chars,
                                 context=self.s.prompt_context, attempt=attempt, **fields)
      try:
        reply = self._call(prompt, out)
      except RequestRejected as e:
        out.parse_failures.append(e.reason)
        return None, e.reason
      try:
        return schema_lib.parse(reply.text, prompt.schema), ""
      except schema_lib.ParseError as e:
        out.parse_failures.append(e.reason)
        reason = e.reason
    return None, reason

  # -- One record.

  def curate(self, item: Item, image: bytes, mime: str = "image/jpeg") -> Outcome:
    start = time.monotonic()
    out = Outcome(index=item.index, image_id=item.image_id, status="unresolved")
    cand_ids = [c.entity_id for c in item.candidates]
    if not self.backend.uses_llm:
      if item.candidates:
        top = item.candidates[0]
        out.status, out.entity_id, out.reason = "candidate", top.entity_id, "top1"
        out.entity_name = self.kb.title(top.entity_id) or top.name
      else:
        out.reason = "no_candidates"
      return out
    common = dict(out=out, image=image, mime=mime, image_id=item.image_id)
    if self.s.mode == "direct":
      resp, reason = self._ask("direct", **common)
    else:
      context = [(c.name, self.kb.summary(c.entity_id)) for c in item.candidates]
      kind = "one_call" if self.s.mode == "one_call" else "verify"
      resp, reason = self._ask(kind, caption=item.caption, candidates=context, **common)
    if resp is None:
      out.status = "abstained" if reason == "refusal" else "unresolved"
      out.reason = reason
    else:
      out.answer = resp.entity_name
      self._resolve(out, resp.entity_name, cand_ids)
      if self.s.mode == "one_call":
        out.rationale = resp.rationale if out.entity_id else ""
        out.qa = [q.model_dump() for q in resp.qa]
      elif self.s.mode == "multi_call" and out.entity_id:
        rat, _ = self._ask("rationale", entity_name=out.entity_name,
                           entity_summary=self.kb.summary(out.entity_id), **common)
        out.rationale = rat.rationale if rat else ""
        if self.s.num_qa:
          qa, _ = self._ask("qa", **common)
          out.qa = [q.model_dump() for q in qa.qa] if qa else []
    out.latency_s = round(time.monotonic() - start, 4)
    return out

  def _resolve(self, out: Outcome, name: str, cand_ids: Sequence[str]) -> None:
    if schema_lib.is_abstention(name):
      out.status, out.reason = "abstained", "none"
      return
    entity_id, method = self.kb.resolve(name, cand_ids)
    if entity_id is None:
      out.status, out.reason = "unresolved", "unknown_name"
      return
    out.entity_id, out.entity_name = entity_id, self.kb.title(entity_id)
    out.status = "kept" if cand_ids and entity_id == cand_ids[0] else "corrected"
    out.reason = f"resolved:{method}"


def bad_image_outcome(item: Item, message: str) -> Outcome:
  """The journaled outcome of an item whose image does not decode (no LLM call is made)."""
  return Outcome(index=item.index, image_id=item.image_id, status=BAD_IMAGE, reason=message)


def eval_duplicate_outcome(item: Item, eval_image: str, distance: int) -> Outcome:
  """The journaled outcome of a web image that copies an evaluation image (no LLM call)."""
  return Outcome(index=item.index, image_id=item.image_id, status=EVAL_DUPLICATE,
                 reason=f"near-duplicate of {eval_image} (distance {distance})")


def to_record(item: Item, image: bytes, out: Outcome, backend: str) -> RewRecord:
  # Plain dicts: RewRecord checks and converts them (dataclass items cost a deep copy each).
  return RewRecord(
      image_id=item.image_id, image=image, caption=item.caption,
      candidates=[{"entity_id": c.entity_id, "name": c.name, "score": c.score}
                  for c in item.candidates],
      entity_id=out.entity_id, entity_name=out.entity_name, curation_status=out.status,
      backend=backend, rationale=out.rationale,
      qa=[{"question": q["question"], "answer": q["answer"]} for q in out.qa])
