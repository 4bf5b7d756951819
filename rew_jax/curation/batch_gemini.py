"""Gemini batch prediction as a batch service of `rew_jax.curation.batch` (backend `gemini`,
`curation.mode_of_calls = "batch"`), through google-genai itself:

    client.files.upload(file=<request JSONL>)                   → files/…
    client.batches.create(model=..., src="files/…", config={display_name: <input file>})
    client.batches.get(name="batches/…")                        → state, dest.file_name
    client.files.download(file=dest.file_name)                 → result JSONL
    client.batches.list()                                       → a job whose creation went
                                                                  unrecorded, by display name

Request lines are `{"key": <custom id>, "request": <the GenerateContentRequest the online
backend POSTs>}`, rendered by the client's own converter (`Gemini.payload`); result lines
`{"key", "response": GenerateContentResponse}` are read by the online backend's
`reply_from`, and `{"key", "error"|"status": {"code", "message"}}` lines are re-submitted,
except INVALID_ARGUMENT-like codes (rejected, as a 400 online). The client's own retry
policy (`HttpRetryOptions`: 408, 429, 5xx) takes `curation.max_attempts` and the backoff
settings. Job states are reported with the OpenAI names the batch engine journals
(JOB_STATE_SUCCEEDED → completed; FAILED, CANCELLED, EXPIRED). The Developer API only:
Vertex AI batch prediction reads its requests from gs:// or BigQuery and writes
predictions there, which this service does not do (a ConfigError says so).
"""

from __future__ import annotations

import io
import json

from rew_jax.curation.backends import base
from rew_jax.curation.backends import gemini
from rew_jax.errors import ConfigError

STATUS = {"JOB_STATE_SUCCEEDED": "completed", "JOB_STATE_FAILED": "failed",
          "JOB_STATE_CANCELLED": "cancelled", "JOB_STATE_EXPIRED": "expired",
          "JOB_STATE_PENDING": "validating", "JOB_STATE_QUEUED": "validating",
          "JOB_STATE_RUNNING": "in_progress"}
# google.rpc codes of a request that will never succeed: INVALID_ARGUMENT,
# FAILED_PRECONDITION, OUT_OF_RANGE (HTTP 400 online).
REJECTED_CODES = (3, 9, 11, 400)


class Service:
  """The batch service of `rew_jax.curation.batch` for Gemini (see the module docstring)."""

  def __init__(self, backend, c):
    from google.genai import types  # pylint: disable=g-import-not-at-top
    if backend.cfg["vertex_project"]:
      raise ConfigError("curation.mode_of_calls 'batch' with backend 'gemini' uses the Gemini "
                        "Developer API's batch jobs; Vertex AI batch prediction (gs:// "
                        "sources and destinations) is not supported: unset "
                        "curation.gemini.vertex_project, or curate online")
    self.types = types
    self.model = backend.cfg["model"]
    retry = types.HttpRetryOptions(attempts=c.max_attempts, initial_delay=c.backoff_initial_s,
                                   max_delay=c.backoff_max_s)
    self.client = gemini.make_client(backend.cfg, retry)

  @staticmethod
  def line(cid: str, body: dict) -> str:
    return json.dumps({"key": cid, "request": body}, ensure_ascii=False) + "\n"

  def read_results(self, text: str) -> dict[str, object]:
    """custom id → a Reply, a RequestRejected, or None (to re-submit); unreadable lines are
    skipped, so their requests are re-submitted."""
    out: dict[str, object] = {}
    for line in text.splitlines():
      try:
        row = json.loads(line)
        cid = row["key"]
        if not isinstance(cid, str):
          continue
      except (ValueError, KeyError, TypeError):
        continue
      error = row.get("error") or row.get("status")
      resp = row.get("response")
      if error or not isinstance(resp, dict):
        code = error.get("code") if isinstance(error, dict) else None
        out[cid] = (base.RequestRejected("bad_request", str(error.get("message", ""))[:200])
                    if code in REJECTED_CODES else None)
        continue
      try:
        response = self.types.GenerateContentResponse.model_validate(resp)
        out[cid] = gemini.reply_from(response)
      except base.RequestRejected as e:
        out[cid] = e
      except ValueError:  # Not a GenerateContentResponse (pydantic's ValidationError).
        out[cid] = None
    return out

  def upload(self, name: str, data: bytes) -> str:
    made = self.client.files.upload(
        file=io.BytesIO(data), config=self.types.UploadFileConfig(display_name=name,
                                                                  mime_type="jsonl"))
    return made.name

  def create(self, input_file_id: str, window: str, metadata: dict) -> dict:
    # Gemini takes no completion window (its jobs aim at 24 h); the display name is the
    # request file's, by which `find` looks a job up.
    job = self.client.batches.create(
        model=self.model, src=input_file_id,
        config=self.types.CreateBatchJobConfig(display_name=metadata["rew_jax_input"]))
    return self._state(job)

  def get(self, batch_id: str) -> dict:
    return self._state(self.client.batches.get(name=batch_id))

  def find(self, job: dict, limit: int = 2000) -> dict | None:
    """The newest job with the journaled input file's name as its display name."""
    pager = self.client.batches.list(config=self.types.ListBatchJobsConfig(page_size=100))
    for n, made in enumerate(pager):
      if made.display_name == job["input"]:
        return self._state(made)
      if n >= limit:
        break
    return None

  def content(self, file_id: str) -> str:
    return self.client.files.download(file=file_id).decode("utf-8")

  @staticmethod
  def _state(job) -> dict:
    state = getattr(job.state, "value", job.state) or ""
    dest = job.dest
    out = {"id": job.name, "status": STATUS.get(state, str(state).lower()), "state": state,
           "output_file_id": getattr(dest, "file_name", None) if dest else None,
           "error_file_id": None, "request_counts": {}}
    if job.error:
      out["errors"] = job.error.model_dump(mode="json", exclude_none=True)
    return out
