"""`simulated`: a stand-in for a multimodal LLM, for the embedded synthetic world only.

This is a simulator, not a model. It reads the world's ground truth (`truth/entities.jsonl`,
`truth/web_truth.jsonl`) to know which entity each image shows, and answers in the real
response format. It exists so that the demo and the tests run every code path that follows
a real LLM call (parsing, validation, name resolution, statuses, records, report) without a
network or weights. Its knowledge of the truth is deliberately degraded by configurable
error modes, each drawn per image from a seeded hash (so runs are reproducible, resumable
and identical between the local runner and Beam):

  wrong_pick    answers another candidate (or a similar-looking entity) instead of the truth
  hallucinate   answers a plausible name that is not in the KB
  generic       answers the category ("bird") instead of the entity
  malformed     truncated or mistyped JSON (drawn per attempt: a parse retry may recover)
  refusal       declines in prose, without JSON (per attempt)

When the true entity is not among the candidates it finds it anyway with probability
`outside_recall`, else it keeps the top candidate (the paper's LLM also fails to correct
some noisy labels). Answers sometimes drop disambiguation parentheses or change case, and
replies come bare, fenced or wrapped in prose, as real models' do. Rationales and QA pairs
are grounded in the entity's look (shape, colour, pattern): what the image shows.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time

import numpy as np

from rew_jax import registry
from rew_jax.curation.backends.base import Backend, BackendError, Reply, options
from rew_jax.curation.prompts import Prompt
from rew_jax.data import synthetic

DEFAULTS = dict(world_dir="", seed=0, wrong_pick=0.05, hallucinate=0.02, generic=0.02,
                malformed=0.04, refusal=0.01, outside_recall=0.7, latency_s=0.0)
_CANDIDATE_LINE = re.compile(r'^\d+\. ("(?:[^"\\]|\\.)*")', re.MULTILINE)
_NUM_QA = re.compile(r"\b(\d+) question")
_SHOWN = re.compile(r"The image shows (.+?) \((?:The |\))")
_FAKE_HEADS = ("Golden", "Silver", "Phantom", "Royal", "Midnight", "Ember")
_FAKE_TAILS = ("Phoenix", "Griffin", "Zeppelin", "Orchid", "Citadel", "Leviathan")
_PATTERN_PHRASE = {
    "plain": "a uniform {c} colour", "striped": "{c} colouring crossed by thin stripes",
    "banded": "{c} colouring with broad bands", "spotted": "{c} colouring with round spots",
    "checkered": "a {c} checkered pattern",
}


def _rng(*parts) -> np.random.Generator:
  digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
  return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def rationale_for(e: synthetic.Entity, name: str) -> str:
  """What is visible (the true entity's look), argued towards the answered `name`."""
  look = _PATTERN_PHRASE[e.pattern].format(c=e.colour)
  return (f"The {e.category} in the image has {synthetic.SHAPE_TEXT[e.shape]} and {look}. "
          f"That shape and colouring match the description of the {name}, which is "
          f"recognisable by these features.")


def qa_for(e: synthetic.Entity, n: int, rng: np.random.Generator) -> list[dict]:
  pool = [
      (f"What colour is the {e.category}?", e.colour),
      (f"What pattern covers the {e.category}?",
       "none, it is plain" if e.pattern == "plain" else e.pattern),
      (f"What is the outline of the {e.category} like?", synthetic.SHAPE_TEXT[e.shape]),
      ("What kind of thing is shown?", e.category),
      (f"Is the {e.category} striped?", "yes" if e.pattern == "striped" else "no"),
  ]
  order = rng.permutation(len(pool))[:n]
  return [{"question": pool[i][0], "answer": pool[i][1]} for i in order]


@registry.CURATION_BACKENDS.register("simulated")
class SimulatedLLM(Backend):
  """See the module docstring. `world_dir` is the embedded world's directory."""
  name = "simulated"

  def __init__(self, **kwargs):
    cfg = options("simulated", DEFAULTS, kwargs)
    self.cfg = cfg
    world = cfg["world_dir"]
    if not world or not os.path.isfile(os.path.join(world, "truth", "web_truth.jsonl")):
      raise BackendError("curation backend 'simulated' answers from the embedded world's "
                         f"ground truth; {world!r} has no truth/web_truth.jsonl")
    self.entities = {e.entity_id: e for e in synthetic.load_entities(world)}
    self.truth = {r["image_id"]: r["entity_id"] for r in
                  synthetic.read_jsonl(os.path.join(world, "truth", "web_truth.jsonl"))}
    self.visual = [e for e in self.entities.values() if e.category != "concept"]

  # -- The answer a (degraded) model would give.

  def _entity_answer(self, prompt: Prompt, truth: synthetic.Entity) -> tuple[str, str]:
    """(entity name, justification) for verify / one_call / direct prompts."""
    rng = _rng(self.cfg["seed"], "answer", prompt.image_id)
    names = [json.loads(m) for m in _CANDIDATE_LINE.findall(prompt.text)]
    u = rng.random()
    c = self.cfg
    cut = np.cumsum([c["wrong_pick"], c["hallucinate"], c["generic"]])
    if u < cut[0]:
      others = [n for n in names if n != truth.title]
      if not others:
        others = [e.title for e in synthetic.similar_entities(truth, self.visual)[:3]]
      if others:
        return others[int(rng.integers(len(others)))], "The caption names it."
    elif u < cut[1]:
      name = (f"{_FAKE_HEADS[int(rng.integers(len(_FAKE_HEADS)))]} "
              f"{_FAKE_TAILS[int(rng.integers(len(_FAKE_TAILS)))]}")
      return name, "It looks like this famous one."
    elif u < cut[2]:
      return truth.category, f"The image shows a {truth.category}."
    if prompt.kind != "direct" and truth.title not in names and names:
      if rng.random() >= c["outside_recall"]:
        return names[0], "The first candidate matches the caption."
    name = truth.title
    if rng.random() < 0.3:  # How people and models write names: no "(...)", other case.
      name = truth.mention if rng.random() < 0.5 else truth.title.lower()
    return name, f"The {truth.colour} {truth.pattern} {truth.category} in the image matches."

  def _payload(self, prompt: Prompt, truth: synthetic.Entity) -> dict:
    rng = _rng(self.cfg["seed"], "qa", prompt.image_id)
    m = _NUM_QA.search(prompt.text)
    num_qa = int(m.group(1)) if m else 3
    if prompt.kind == "rationale":
      m = _SHOWN.search(prompt.text)
      return {"rationale": rationale_for(truth, m.group(1) if m else truth.title)}
    if prompt.kind == "qa":
      return {"qa": qa_for(truth, num_qa, rng)}
    name, why = self._entity_answer(prompt, truth)
    payload = {"entity_name": name, "justification": why}
    if prompt.kind == "one_call":
      payload["rationale"] = rationale_for(truth, name)
      payload["qa"] = qa_for(truth, num_qa, rng)
    return payload

  def generate(self, prompt: Prompt, timeout_s: float) -> Reply:
    if self.cfg["latency_s"]:
      time.sleep(self.cfg["latency_s"])
    truth_id = self.truth.get(prompt.image_id)
    if truth_id is None:
      text = "I'm sorry, I cannot identify this image."
    else:
      text = self._render(prompt, self._payload(prompt, self.entities[truth_id]))
    # A rough usage estimate (about 4 characters per token, ~258 tokens per image).
    return Reply(text, input_tokens=len(prompt.text) // 4 + 258, output_tokens=len(text) // 4)

  def _render(self, prompt: Prompt, payload: dict) -> str:
    """Serialises like a model would; malformed output and refusals are drawn per attempt."""
    rng = _rng(self.cfg["seed"], "format", prompt.image_id, prompt.kind, prompt.attempt)
    u = rng.random()
    text = json.dumps(payload, ensure_ascii=False)
    if u < self.cfg["malformed"]:
      if rng.random() < 0.5:
        return text[:max(1, len(text) // 2)]  # Cut off mid-reply.
      key = next(iter(payload))
      return json.dumps({**payload, key: [payload[key]]})  # A list where a string belongs.
    if u < self.cfg["malformed"] + self.cfg["refusal"]:
      return "I'm sorry, but I can't help with identifying that."
    style = rng.random()
    if style < 0.2:
      return f"```json\n{text}\n```"
    if style < 0.3:
      return f"Here is my answer:\n{text}\nLet me know if you need more."
    return text
