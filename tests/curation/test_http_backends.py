"""OpenAI-compatible and Gemini backends against a stub server on 127.0.0.1."""

import base64
import json
import os
import re

import pytest

from rew_jax import records
from rew_jax.curation import core, run
from rew_jax.curation.backends.base import BackendError
from rew_jax.curation.backends.openai import OpenAICompatible
from rew_jax.errors import UserError
from rew_jax.records import Candidate

from curationcase import curate_config, link_inputs
from stubserver import StubServer, gemini_body, openai_body

KEY = "sk-test-0123456789-secret"
IMAGE = b"\xff\xd8\xff\xe0fake-jpeg"


def first_candidate(prompt_text):
  m = re.search(r'^1\. ("(?:[^"\\]|\\.)*")', prompt_text, re.MULTILINE)
  return json.loads(m.group(1)) if m else "none"


def prompt_text(path, body):
  if body is None:
    return ""
  if "messages" in body:
    return next(p["text"] for p in body["messages"][-1]["content"] if p["type"] == "text")
  return next(p["text"] for p in body["contents"][0]["parts"] if "text" in p)


def answer_top_candidate(wire):
  def default(path, body):
    text = json.dumps({"entity_name": first_candidate(prompt_text(path, body)),
                       "justification": "j", "rationale": "r",
                       "qa": [{"question": "q", "answer": "a"}]})
    return 200, (openai_body(text) if wire == "openai" else gemini_body(text)), {}, 0
  return default


@pytest.fixture
def openai_stub():
  s = StubServer(answer_top_candidate("openai"))
  yield s
  s.close()


@pytest.fixture
def gemini_stub():
  s = StubServer(answer_top_candidate("gemini"))
  yield s
  s.close()


class FakeKB:
  def title(self, entity_id):
    return {"Q1": "Jade Kestrel", "Q2": "Ruby Kestrel"}.get(entity_id, "")

  def summary(self, entity_id):
    return "A bird."

  def resolve(self, name, candidate_ids=()):
    ids = {"jade kestrel": "Q1", "ruby kestrel": "Q2"}
    eid = ids.get(name.lower())
    return (eid, "exact") if eid else (None, "abstain")


ITEM = core.Item(shard="s", index=0, image_id="web_1", caption="a kestrel", image_path="x",
                 candidates=(Candidate("Q1", "Jade Kestrel", 1.0),
                             Candidate("Q2", "Ruby Kestrel", 0.5)))


def curator(backend, **settings):
  s = dict(mode="one_call", timeout_s=0.5, max_attempts=5, backoff_initial_s=0.001,
           backoff_max_s=0.01)
  s.update(settings)
  return core.Curator(backend, FakeKB(), core.Settings(**s))


def test_openai_wire_format(openai_stub, monkeypatch):
  monkeypatch.setenv("STUB_KEY", KEY)
  b = OpenAICompatible(base_url=openai_stub.url + "/v1", model="gemma-3", api_key_env="STUB_KEY")
  out = curator(b).curate(ITEM, IMAGE)
  assert (out.status, out.entity_id, out.input_tokens, out.output_tokens) == ("kept", "Q1", 11, 7)
  path, headers, body = openai_stub.requests[0]
  assert path == "/v1/chat/completions" and headers["Authorization"] == f"Bearer {KEY}"
  assert body["model"] == "gemma-3"
  fmt = body["response_format"]
  assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
  schema = fmt["json_schema"]["schema"]
  assert schema["required"] == ["entity_name", "justification", "rationale", "qa"]  # All.
  assert schema["additionalProperties"] is False and "default" not in json.dumps(schema)
  image = next(p for p in body["messages"][0]["content"] if p["type"] == "image_url")
  url = image["image_url"]["url"]
  assert url.startswith("data:image/jpeg;base64,")
  assert base64.b64decode(url.split(",", 1)[1]) == IMAGE


def test_openai_retries_429_500_and_a_slow_reply(openai_stub):
  good = openai_body(json.dumps({"entity_name": "Ruby Kestrel"}))
  openai_stub.script += [(429, {"error": "slow down"}, {"Retry-After": "0"}, 0),
                         (500, "internal error", {}, 0),
                         (503, {"error": "overloaded"}, {}, 0),
                         (200, good, {}, 1.5)]  # Past the 0.5 s timeout.
  b = OpenAICompatible(base_url=openai_stub.url + "/v1", model="m")
  out = curator(b).curate(ITEM, IMAGE)
  assert (out.status, out.entity_id) == ("kept", "Q1")  # The 5th call gets the default.
  assert out.retries == 4 and out.calls == 5
  assert out.transient == {"rate_limit": 1, "server": 2, "timeout": 1}


def test_openai_gives_up_after_max_attempts(openai_stub):
  openai_stub.script += [(500, "down", {}, 0)] * 3
  b = OpenAICompatible(base_url=openai_stub.url + "/v1", model="m")
  from rew_jax.curation.backends.base import TransientError
  with pytest.raises(TransientError, match="HTTP 500"):
    curator(b, max_attempts=3).curate(ITEM, IMAGE)
  assert len(openai_stub.requests) == 3


@pytest.mark.parametrize("status,body,want", [
    (400, {"error": "image too large"}, ("unresolved", "http_400")),
    (200, "<html>gateway</html>", ("unresolved", "bad_reply")),
    (200, {"choices": []}, ("unresolved", "bad_reply")),
    (200, {"choices": [{"message": {"content": None, "refusal": "I can't help with that."}}]},
     ("abstained", "refusal")),
    (200, openai_body('{"entity_name": "Jade Kes'), ("unresolved", "truncated_json")),
])
def test_openai_bad_replies(openai_stub, status, body, want):
  openai_stub.script += [(status, body, {}, 0)] * 2
  b = OpenAICompatible(base_url=openai_stub.url + "/v1", model="m")
  out = curator(b).curate(ITEM, IMAGE)
  assert (out.status, out.reason) == want


def test_openai_auth_failure_stops_the_run(openai_stub):
  openai_stub.script.append((401, {"error": "bad key"}, {}, 0))
  b = OpenAICompatible(base_url=openai_stub.url + "/v1", model="m")
  with pytest.raises(BackendError, match="HTTP 401"):
    curator(b).curate(ITEM, IMAGE)


def test_openai_needs_a_model():
  with pytest.raises(BackendError, match="model"):
    OpenAICompatible(base_url="http://127.0.0.1:1/v1")


genai = pytest.importorskip("google.genai", reason="google-genai (the gcp extra) is not "
                            "installed: pip install 'rew_jax[gcp]'")


def test_gemini_wire_format(gemini_stub, monkeypatch):
  from rew_jax.curation.backends.gemini import Gemini
  monkeypatch.setenv("STUB_GEMINI_KEY", KEY)
  b = Gemini(base_url=gemini_stub.url, api_key_env="STUB_GEMINI_KEY", model="gemini-x")
  out = curator(b).curate(ITEM, IMAGE)
  assert (out.status, out.entity_id, out.input_tokens, out.output_tokens) == ("kept", "Q1", 13, 5)
  path, headers, body = gemini_stub.requests[0]
  assert path.endswith("/models/gemini-x:generateContent")
  assert headers["x-goog-api-key"] == KEY
  gen = body["generationConfig"]
  assert gen["responseMimeType"] == "application/json"
  assert gen["responseSchema"]["required"] == ["entity_name"]
  parts = body["contents"][0]["parts"]
  inline = next(p["inlineData"] for p in parts if "inlineData" in p)
  assert base64.urlsafe_b64decode(inline["data"]) == IMAGE


def test_gemini_retries_429_500_and_a_slow_reply(gemini_stub, monkeypatch):
  from rew_jax.curation.backends.gemini import Gemini
  monkeypatch.setenv("STUB_GEMINI_KEY", KEY)
  err = lambda code, status: {"error": {"code": code, "message": "m", "status": status}}
  gemini_stub.script += [
      (429, err(429, "RESOURCE_EXHAUSTED"), {"Retry-After": "0"}, 0),
      (500, err(500, "INTERNAL"), {}, 0),
      (200, gemini_body('{"entity_name": "Ruby Kestrel"}'), {}, 1.5)]
  b = Gemini(base_url=gemini_stub.url, api_key_env="STUB_GEMINI_KEY")
  out = curator(b).curate(ITEM, IMAGE)
  assert (out.status, out.entity_id) == ("kept", "Q1")  # The 4th call gets the default.
  assert out.transient == {"rate_limit": 1, "server": 1, "timeout": 1} and out.retries == 3


def test_gemini_key_errors_name_the_variable_not_the_key(gemini_stub, monkeypatch):
  from rew_jax.curation.backends.gemini import Gemini
  monkeypatch.delenv("STUB_GEMINI_KEY", raising=False)
  with pytest.raises(BackendError, match="STUB_GEMINI_KEY is not set"):
    Gemini(base_url=gemini_stub.url, api_key_env="STUB_GEMINI_KEY")
  monkeypatch.setenv("STUB_GEMINI_KEY", KEY)
  gemini_stub.script.append((403, {"error": {"code": 403, "message": "denied",
                                             "status": "PERMISSION_DENIED"}}, {}, 0))
  b = Gemini(base_url=gemini_stub.url, api_key_env="STUB_GEMINI_KEY")
  with pytest.raises(UserError) as e:
    curator(b).curate(ITEM, IMAGE)
  assert "HTTP 403" in str(e.value) and KEY not in str(e.value)


@pytest.mark.parametrize("wire", ["openai", "gemini"])
def test_full_run_over_http_never_writes_the_key(world, tmp_path, monkeypatch, wire):
  stub = StubServer(answer_top_candidate(wire))
  stub.script += [(429, {"error": {"code": 429, "message": "q", "status": "X"}},
                   {"Retry-After": "0"}, 0),
                  (500, {"error": {"code": 500, "message": "e", "status": "INTERNAL"}}, {}, 0)]
  monkeypatch.setenv("STUB_KEY", KEY)
  try:
    work = link_inputs(world, tmp_path / "w")
    config = curate_config(wire, concurrency=8)
    if wire == "openai":
      config.curation.openai = dict(base_url=stub.url + "/v1", model="m", api_key_env="STUB_KEY")
    else:
      config.curation.gemini = dict(base_url=stub.url, api_key_env="STUB_KEY")
    report = run.curate(config, work, verbose=False)
  finally:
    stub.close()
  out = list(records.read_records(os.path.join(work, "records")))
  assert len(out) == report["records"] == 48
  for r in out:  # The stub answers the first candidate: kept, or "none" without candidates.
    assert r.curation_status == ("kept" if r.candidates else "abstained")
  assert report["retries"] == 2 and report["usage"]["input_tokens"] > 0
  for root, _, files in os.walk(work):
    for f in files:
      with open(os.path.join(root, f), "rb") as fh:
        assert KEY.encode() not in fh.read(), f


def test_gemini_on_vertex_ai_with_application_default_credentials(tmp_path, monkeypatch):
  """Vertex AI mode reads no key: google-auth's ADC (here a service-account file whose
  token endpoint is the stub) yields the bearer token the requests carry."""
  from rew_jax.curation.backends.gemini import Gemini
  answer = answer_top_candidate("gemini")

  def default(path, body):
    if path == "/token":
      return 200, {"access_token": "adc-token-42", "expires_in": 3600,
                   "token_type": "Bearer"}, {}, 0
    return answer(path, body)

  stub = StubServer(default)
  try:
    from cryptography.hazmat.primitives import serialization  # pylint: disable=g-import-not-at-top
    from cryptography.hazmat.primitives.asymmetric import rsa  # pylint: disable=g-import-not-at-top
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    adc = tmp_path / "adc.json"  # A service account whose token endpoint is the stub.
    adc.write_text(json.dumps({"type": "service_account", "project_id": "proj",
                               "private_key_id": "k1", "private_key": key,
                               "client_email": "curation@proj.iam.gserviceaccount.com",
                               "client_id": "1", "token_uri": f"{stub.url}/token"}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    b = Gemini(base_url=stub.url, model="gemini-x", vertex_project="proj",
               vertex_location="europe-west4")
    out = curator(b).curate(ITEM, IMAGE)
    assert out.entity_id == "Q1"
    paths = [p for p, _, _ in stub.requests]
    assert paths[0] == "/token"
    path, headers, _ = stub.requests[-1]
    assert "/projects/proj/locations/europe-west4/publishers/google/models/gemini-x:" \
           "generateContent" in path
    assert headers["Authorization"] == "Bearer adc-token-42"
    assert "x-goog-api-key" not in {k.lower() for k in headers}
    b.close()
  finally:
    stub.close()
  with pytest.raises(BackendError, match="vertex_location"):
    Gemini(vertex_project="proj")
