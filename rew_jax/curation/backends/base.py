"""What every curation backend provides, and the error kinds the runner acts on.

A backend turns one `Prompt` (text + image + response schema) into one `Reply` (the raw text
the model produced, plus token usage when the service reports it). It does not parse,
validate or retry: the runner does that, identically for every backend. What a backend must
get right is classifying failures:

  TransientError    worth retrying with backoff: HTTP 429 and 5xx, timeouts, dropped
                    connections (carries Retry-After when the server sent one);
  RequestRejected   this request will never succeed (HTTP 400/413/422, a blocked prompt):
                    the record is marked unresolved with the reason, the run goes on;
  BackendError      the backend cannot work at all (401/403/404, a missing key or client
                    library): a UserError that stops the run with one clear line.

Options. A backend declares its options once, with their defaults, in `default_config()`:
that is the `curation.<name>` group of a config (`rew_jax.curation.section.schema` builds
the section's schema from it) and what the constructor lays the given options over
(`options`). An option the backend does not declare is a `ConfigError` naming it and the
closest declared ones.

API keys are read from an environment variable named in the config and are never logged,
written to reports, or included in an exception message.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

from rew_jax import config as config_lib
from rew_jax.curation.prompts import Prompt
from rew_jax.errors import UserError


class TransientError(Exception):
  def __init__(self, kind: str, message: str, retry_after: float | None = None):
    super().__init__(f"{kind}: {message}")
    self.kind = kind
    self.retry_after = retry_after


class RequestRejected(Exception):
  def __init__(self, reason: str, message: str):
    super().__init__(f"{reason}: {message}")
    self.reason = reason


class BackendError(UserError):
  """A backend that cannot run as configured."""


@dataclasses.dataclass(frozen=True)
class Reply:
  text: str
  input_tokens: int = 0
  output_tokens: int = 0


class Backend:
  """Base class. Subclasses set `name`, declare `default_config` and implement `generate`."""
  name = "base"
  # False for label-only backends (top-1 candidate): the runner then makes no LLM call.
  uses_llm = True

  @classmethod
  def default_config(cls) -> config_lib.ConfigDict:
    """Every option of the backend at its default (a config's `curation.<name>` group)."""
    return config_lib.ConfigDict()

  @classmethod
  def options(cls, given: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults with `given` laid over them; an undeclared option is a ConfigError
    naming `curation.<name>.<option>` and the closest declared options."""
    defaults = cls.default_config()
    config_lib.check_keys(config_lib.ConfigDict(dict(given)), defaults, f"curation.{cls.name}")
    return {**defaults.to_dict(), **given}

  def generate(self, prompt: Prompt, timeout_s: float) -> Reply:
    raise NotImplementedError

  def close(self) -> None:
    pass


def api_key(env_var: str, backend: str, required: bool = True) -> str:
  """The key from the environment; the error names the variable, never a value."""
  if not env_var:
    if required:
      raise BackendError(f"curation backend {backend!r}: set api_key_env to the name of the "
                         "environment variable holding the API key")
    return ""
  key = os.environ.get(env_var, "")
  if required and not key:
    raise BackendError(f"curation backend {backend!r}: environment variable {env_var} is not "
                       "set (it must hold the API key)")
  return key


def parse_retry_after(value: str | None) -> float | None:
  """Retry-After in seconds (the HTTP-date form is rare from these APIs and ignored)."""
  if not value:
    return None
  try:
    return max(0.0, float(value))
  except ValueError:
    return None


def classify_status(status: int, body: str, retry_after: float | None, backend: str) -> None:
  """Raises the error kind an HTTP status means; returns for 2xx."""
  if 200 <= status < 300:
    return
  snippet = " ".join(body.split())[:200]
  if status == 429:
    raise TransientError("rate_limit", f"HTTP 429 {snippet}", retry_after)
  if status >= 500 or status == 408:
    raise TransientError("server", f"HTTP {status} {snippet}", retry_after)
  if status in (401, 403, 404):
    raise BackendError(f"curation backend {backend!r}: HTTP {status} ({snippet}); check the "
                       "model name, base URL and API key variable")
  raise RequestRejected(f"http_{status}", snippet)
