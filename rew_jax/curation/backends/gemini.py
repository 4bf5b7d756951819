"""`gemini`: Gemini through the google-genai client (the `gcp` extra), with structured output.

    client.models.generate_content(model=..., contents=[image part, prompt text],
        config=GenerateContentConfig(response_mime_type="application/json",
                                     response_schema=<the prompt's pydantic model>))

Two ways in. The Gemini Developer API: the key comes only from the environment variable
named by `api_key_env` (default GEMINI_API_KEY) and is handed to the client, never logged
or written. Vertex AI: set `vertex_project` and `vertex_location`; the client then
authenticates with Application Default Credentials (a Dataflow worker's service account,
`gcloud auth application-default login`, or GOOGLE_APPLICATION_CREDENTIALS), and no key is
read. The client's own retry
loop is switched off (one attempt): the runner retries, identically for every backend.
`base_url` points the client elsewhere (a proxy, or the stub server of the tests).
"""

from __future__ import annotations

from rew_jax import config as config_lib
from rew_jax import registry
from rew_jax.curation.backends import base
from rew_jax.curation.prompts import Prompt


def _classify_exception(e: Exception, timeout_s: float) -> None:
  """Maps transport exceptions (httpx/httpx2/requests, by class name) to our kinds."""
  names = {c.__name__ for c in type(e).__mro__}
  if any("Timeout" in n for n in names):
    raise base.TransientError("timeout", f"no reply within {timeout_s} s") from e
  if names & {"ConnectError", "ConnectionError", "RemoteProtocolError", "ReadError"}:
    raise base.TransientError("connection", type(e).__name__) from e


@registry.CURATION_BACKENDS.register("gemini")
class Gemini(base.Backend):
  name = "gemini"

  @classmethod
  def default_config(cls) -> config_lib.ConfigDict:
    return config_lib.ConfigDict(dict(
        model="gemini-2.5-flash",
        api_key_env="GEMINI_API_KEY",  # The variable holding the key (Developer API).
        base_url="",                   # "": Google's endpoint.
        api_version="",
        temperature=0.0,
        max_output_tokens=1024,
        structured_output=True,        # The prompt's pydantic model as response_schema.
        vertex_project="",             # Both set: Vertex AI with ADC, no key.
        vertex_location=""))

  def __init__(self, **kwargs):
    self.cfg = self.options(kwargs)
    try:
      from google.genai import errors, types  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise base.BackendError("curation backend 'gemini' needs google-genai: "
                              "pip install 'rew_jax[gcp]'") from None
    self._types, self._errors = types, errors
    self.client = make_client(self.cfg, types.HttpRetryOptions(attempts=1))

  def _contents_and_config(self, prompt: Prompt, timeout_s: float | None):
    types = self._types
    config = dict(temperature=self.cfg["temperature"],
                  max_output_tokens=self.cfg["max_output_tokens"])
    if timeout_s is not None:
      config["http_options"] = types.HttpOptions(
          timeout=int(timeout_s * 1000), retry_options=types.HttpRetryOptions(attempts=1))
    if self.cfg["structured_output"]:
      config.update(response_mime_type="application/json", response_schema=prompt.schema)
    contents = [types.Part.from_bytes(data=prompt.image, mime_type=prompt.image_mime),
                prompt.text]
    return contents, types.GenerateContentConfig(**config)

  def payload(self, prompt: Prompt) -> dict:
    """The request body `generate` POSTs, as a batch request line's `request`."""
    # The client has no public way to render a request without sending it; its own
    # converter (the one generate_content calls) keeps batch requests equal to online ones.
    from google.genai import _common, models  # pylint: disable=g-import-not-at-top
    contents, config = self._contents_and_config(prompt, None)
    params = self._types._GenerateContentParameters(  # pylint: disable=protected-access
        model=self.cfg["model"], contents=contents, config=config)
    body = models._GenerateContentParameters_to_mldev(  # pylint: disable=protected-access
        self.client._api_client, params, None, params)  # pylint: disable=protected-access
    for key in ("_url", "_query", "config"):
      body.pop(key, None)
    return _common.encode_unserializable_types(_common.convert_to_dict(body))

  def generate(self, prompt: Prompt, timeout_s: float) -> base.Reply:
    errors = self._errors
    contents, config = self._contents_and_config(prompt, timeout_s)
    try:
      response = self.client.models.generate_content(
          model=self.cfg["model"], contents=contents, config=config)
    except errors.APIError as e:
      retry_after = None
      headers = getattr(getattr(e, "response", None), "headers", None)
      if headers is not None:
        retry_after = base.parse_retry_after(headers.get("Retry-After"))
      base.classify_status(int(e.code or 500), str(e.message or e.status or ""), retry_after,
                           self.name)
      raise  # classify_status raises for every non-2xx code.
    except Exception as e:  # Transport errors come from whichever HTTP library is in use.
      _classify_exception(e, timeout_s)
      raise
    return reply_from(response)

  def close(self) -> None:
    try:
      self.client.close()
    except Exception:  # Older clients have no close(); nothing to release then.
      pass


def make_client(cfg, retry_options):
  """A google-genai client for the backend's options (Developer API or Vertex AI) whose
  requests retry as `retry_options` say."""
  from google import genai  # pylint: disable=g-import-not-at-top
  from google.genai import types  # pylint: disable=g-import-not-at-top
  http = {"retry_options": retry_options}
  if cfg["base_url"]:
    http["base_url"] = cfg["base_url"]
  if cfg["api_version"]:
    http["api_version"] = cfg["api_version"]
  if bool(cfg["vertex_project"]) != bool(cfg["vertex_location"]):
    raise base.BackendError("curation backend 'gemini': Vertex AI needs both vertex_project "
                            "and vertex_location")
  if cfg["vertex_project"]:  # Vertex AI, credentials from ADC; no key.
    return genai.Client(vertexai=True, project=cfg["vertex_project"],
                        location=cfg["vertex_location"], http_options=types.HttpOptions(**http))
  return genai.Client(api_key=base.api_key(cfg["api_key_env"], "gemini"),
                      http_options=types.HttpOptions(**http))


def reply_from(response) -> base.Reply:
  """A GenerateContentResponse (online, or a batch result line's) as a Reply; a blocked
  prompt is RequestRejected."""
  try:
    text = response.text or ""
  except (ValueError, AttributeError):
    text = ""
  if not text:
    candidates = response.candidates or []
    finish = str(candidates[0].finish_reason) if candidates else "no candidates"
    block = getattr(response.prompt_feedback, "block_reason", None)
    if block:
      raise base.RequestRejected("blocked", f"prompt blocked: {block}")
    text = "" if "STOP" in finish else f"(no text; finish reason {finish})"
  usage = response.usage_metadata
  return base.Reply(text,
                    input_tokens=int(getattr(usage, "prompt_token_count", 0) or 0),
                    output_tokens=int(getattr(usage, "candidates_token_count", 0) or 0))
