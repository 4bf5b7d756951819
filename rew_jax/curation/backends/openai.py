"""`openai`: any OpenAI-compatible chat-completions server (vLLM, TGI, llama.cpp, ...).

    POST {base_url}/chat/completions
      {"model", "messages": [{"role": "user", "content": [{"type": "text", ...},
                             {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}]}],
       "response_format": {"type": "json_schema", "json_schema": {"name", "schema", "strict"}},
       "temperature", "max_tokens"}
    → {"choices": [{"message": {"content": "<json>"}, "finish_reason": "stop"}],
       "usage": {"prompt_tokens", "completion_tokens"}}

Serving Gemma 3 or PaliGemma with vLLM, for example:
    vllm serve google/gemma-3-27b-it --port 8000   # then base_url=http://HOST:8000/v1

Plain HTTP with `requests` (one pooled session per thread). The key, if the server needs
one, comes from the environment variable named by `api_key_env`.
"""

from __future__ import annotations

import base64
import threading

import requests

from rew_jax import config as config_lib
from rew_jax import registry
from rew_jax.curation.backends import base
from rew_jax.curation.prompts import Prompt


@registry.CURATION_BACKENDS.register("openai")
class OpenAICompatible(base.Backend):
  name = "openai"

  @classmethod
  def default_config(cls) -> config_lib.ConfigDict:
    return config_lib.ConfigDict(dict(
        base_url="http://127.0.0.1:8000/v1",
        model="",                # Required: the served model's name.
        api_key_env="",          # The variable holding a key, if the server wants one.
        temperature=0.0,
        max_tokens=1024,
        structured_output=True,  # False for servers without `json_schema` response formats.
        system_prompt=""))

  def __init__(self, **kwargs):
    self.cfg = self.options(kwargs)
    if not self.cfg["model"]:
      raise base.BackendError("curation backend 'openai' needs a model name (openai.model)")
    self.url = self.cfg["base_url"].rstrip("/") + "/chat/completions"
    key = base.api_key(self.cfg["api_key_env"], self.name, required=False)
    self._headers = {"Content-Type": "application/json"}
    if key:
      self._headers["Authorization"] = f"Bearer {key}"
    self._local = threading.local()

  def _session(self) -> requests.Session:
    if not hasattr(self._local, "session"):
      self._local.session = requests.Session()
    return self._local.session

  def payload(self, prompt: Prompt) -> dict:
    image_url = (f"data:{prompt.image_mime};base64,"
                 f"{base64.b64encode(prompt.image).decode('ascii')}")
    messages = []
    if self.cfg["system_prompt"]:
      messages.append({"role": "system", "content": self.cfg["system_prompt"]})
    messages.append({"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image_url}},
        {"type": "text", "text": prompt.text}]})
    body = {"model": self.cfg["model"], "messages": messages,
            "temperature": self.cfg["temperature"], "max_tokens": self.cfg["max_tokens"]}
    if self.cfg["structured_output"]:
      body["response_format"] = {"type": "json_schema", "json_schema": {
          "name": prompt.kind, "schema": strict_schema(prompt.json_schema()), "strict": True}}
    return body

  def generate(self, prompt: Prompt, timeout_s: float) -> base.Reply:
    try:
      resp = self._session().post(self.url, json=self.payload(prompt), headers=self._headers,
                                  timeout=timeout_s)
    except requests.Timeout as e:
      raise base.TransientError("timeout", f"no reply within {timeout_s} s") from e
    except requests.ConnectionError as e:
      raise base.TransientError("connection", type(e).__name__) from e
    retry_after = base.parse_retry_after(resp.headers.get("Retry-After"))
    base.classify_status(resp.status_code, resp.text, retry_after, self.name)
    try:
      data = resp.json()
      choice = data["choices"][0]
      content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
      raise base.RequestRejected(
          "bad_reply", f"HTTP {resp.status_code} body is not a chat completion: "
          f"{resp.text[:120]!r}") from None
    if content is None:  # Some servers put a refusal beside a null content.
      content = choice["message"].get("refusal") or ""
    usage = data.get("usage") or {}
    return base.Reply(content if isinstance(content, str) else str(content),
                      input_tokens=_int(usage.get("prompt_tokens")),
                      output_tokens=_int(usage.get("completion_tokens")))

  def close(self) -> None:
    session = getattr(self._local, "session", None)
    if session is not None:
      session.close()


def strict_schema(node):
  """The form strict structured output accepts: every object closed, every property required
  (our optional fields then come back filled, possibly empty), no defaults."""
  if isinstance(node, dict):
    node = {k: strict_schema(v) for k, v in node.items() if k != "default"}
    if node.get("type") == "object":
      node["required"] = list(node.get("properties", {}))
      node["additionalProperties"] = False
    return node
  if isinstance(node, list):
    return [strict_schema(v) for v in node]
  return node


def _int(value) -> int:
  return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
