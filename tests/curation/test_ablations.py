"""The curation ablations (the paper's Table 4): each variant's prompts show exactly what it
should (direct annotation; correction with or without the caption and the Wikipedia
summaries; one call or separate calls), and the simulated LLM only uses what they show."""

import json

import pytest

from rew_jax.curation import core
from rew_jax.curation import perceiver
from rew_jax.curation import prompts
from rew_jax.curation.backends import simulated
from rew_jax.curation.backends.base import Backend, Reply
from rew_jax.errors import ConfigError
from rew_jax.records import Candidate

CAPTION = "my trip: the zebrafinch tower at dusk"
SUMMARIES = {"Q1": "The Jade Kestrel is a bird recognisable by pointed wings.",
             "Q2": "The Amber Dome is a building recognisable by a round roof."}
NAMES = {"Q1": "Jade Kestrel", "Q2": "Amber Dome"}


class FakeKB:
  def summary(self, entity_id):
    return SUMMARIES.get(entity_id, "")

  def title(self, entity_id):
    return NAMES.get(entity_id, "")

  def resolve(self, name, cand_ids):
    del cand_ids
    hits = [q for q, n in NAMES.items() if n.casefold() == name.casefold()]
    return (hits[0], "exact") if hits else (None, "")


class Recording(Backend):
  """Answers every prompt kind validly and keeps the prompts it was sent."""
  name = "recording"

  def __init__(self):
    self.prompts = []

  def generate(self, prompt, timeout_s):
    self.prompts.append(prompt)
    payload = {"entity_name": "Jade Kestrel", "justification": "pointed wings",
               "rationale": "It has pointed wings.",
               "qa": [{"question": "What colour?", "answer": "jade"}]}
    return Reply(json.dumps(payload), input_tokens=1, output_tokens=1)


def _prompts(**settings):
  backend = Recording()
  curator = core.Curator(backend, FakeKB(), core.Settings(**settings))
  item = core.Item(shard="s", index=0, image_id="img", caption=CAPTION, image_path="x.jpg",
                   candidates=(Candidate("Q1", "Jade Kestrel", 0.9),
                               Candidate("Q2", "Amber Dome", 0.8)))
  out = curator.curate(item, b"jpeg bytes")
  assert out.entity_id == "Q1"
  return {p.kind: p.text for p in backend.prompts}


def _shows(text):
  """(caption shown, summaries shown, candidate names shown) in a prompt's text."""
  return ("zebrafinch" in text, "pointed wings" in text or "round roof" in text,
          '"Jade Kestrel"' in text and '"Amber Dome"' in text)


@pytest.mark.parametrize("context, caption, summaries", [
    ("full", True, True), ("", True, True), ("caption", True, False),
    ("summaries", False, True), ("none", False, False)])
def test_one_call_prompt_shows_what_its_context_says(context, caption, summaries):
  text = _prompts(mode="one_call", context=context)["one_call"]
  assert _shows(text) == (caption, summaries, True)
  # Hidden parts leave no trace: no "Caption:" line, and the instructions do not speak of
  # a caption or summaries the model is not given.
  assert ("caption" in text.casefold()) == caption
  assert ("summar" in text.casefold()) == summaries


def test_separate_calls_without_context_hide_the_summary_in_the_rationale_prompt():
  full = _prompts(mode="multi_call")
  assert set(full) == {"verify", "rationale", "qa"}
  assert _shows(full["verify"]) == (True, True, True)
  assert "pointed wings" in full["rationale"]  # The verified entity's summary.
  bare = _prompts(mode="multi_call", context="none")
  assert _shows(bare["verify"]) == (False, False, True)
  assert "pointed wings" not in bare["rationale"] and "Jade Kestrel" in bare["rationale"]
  assert "zebrafinch" not in bare["qa"]


def test_direct_prompt_shows_no_caption_no_candidates():
  text = _prompts(mode="direct")["direct"]
  assert _shows(text)[:2] == (False, False) and "Jade Kestrel" not in text
  assert core.Settings(mode="direct").prompt_context == "none"
  with pytest.raises(ConfigError, match="mode 'direct'"):
    core.Settings(mode="direct", context="full").validate()


def test_summary_chars_zero_removes_the_summaries():
  text = _prompts(mode="one_call", summary_chars=0)["one_call"]
  assert _shows(text) == (True, False, True)
  assert '1. "Jade Kestrel"\n2. "Amber Dome"' in text


def test_bad_contexts_and_templates_that_ask_for_hidden_parts_fail():
  with pytest.raises(ConfigError, match="curation.context"):
    core.Settings(context="wikipedia").validate()
  # An override that asks for the caption cannot run in a context that hides it.
  template = (("verify", "Caption {caption}; candidates {candidates}. Reply in JSON."),)
  core.Settings(mode="multi_call", templates=template).validate()
  with pytest.raises(ConfigError, match="prompts.verify"):
    core.Settings(mode="multi_call", context="none", templates=template).validate()


def test_the_full_context_prompt_is_the_default_one():
  assert prompts.default_templates("full") == prompts.DEFAULT_TEMPLATES
  assert prompts.fields("one_call", "none") == ("candidates", "num_qa")


# --------------------------------------------------- the simulated LLM follows the prompt


def _undecided(shape, colours, pattern):
  """A perception sure of the shape and pattern, split evenly between two colours."""
  def dist(names, weights):
    return {n: weights.get(n, 0.0) for n in names}
  return perceiver.Perception(
      True, dist(perceiver.SHAPES, {shape: 1.0}),
      dist(perceiver.COLOURS, {c: 1 / len(colours) for c in colours}),
      dist(perceiver.PATTERNS, {pattern: 1.0}))


def _answer(monkeypatch, perception, candidates, context, caption=""):
  monkeypatch.setattr(perceiver, "perceive", lambda image: perception)
  llm = simulated.SimulatedLLM(seed=0, kb_path="none", malformed=0.0, refusal=0.0)
  prompt = prompts.build("verify", prompts.templates(context=context), image=b"x",
                         image_id="img", caption=caption, candidates=candidates,
                         context=context)
  # A copied name may be written in lower case: compare case-insensitively.
  return llm._payload(prompt)["entity_name"].casefold()  # pylint: disable=protected-access


def test_without_the_caption_the_simulated_llm_cannot_use_its_words(monkeypatch):
  shape, pattern = "tower", "plain"
  a = simulated.compose_title(shape, "crimson", pattern)
  b = simulated.compose_title(shape, "cobalt", pattern)
  perception = _undecided(shape, ("crimson", "cobalt"), pattern)
  candidates = [(a, ""), (b, "")]
  caption = f"look at this {b.split(' (')[0]}!"
  # The look cannot decide between a and b: the caption naming b does, when it is shown.
  assert _answer(monkeypatch, perception, candidates, "full", caption) == b.casefold()
  assert _answer(monkeypatch, perception, candidates, "caption", caption) == b.casefold()
  for hidden in ("none", "summaries"):
    assert _answer(monkeypatch, perception, candidates, hidden, caption) == a.casefold()


def test_without_summaries_the_simulated_llm_reads_looks_from_names_only(monkeypatch):
  # Names that say nothing about the look: only the summaries describe it.
  candidates = [("Entity Alpha", "The Entity Alpha is a building recognisable by "
                                 f"{simulated.synthetic.SHAPE_TEXT['tower']} and a uniform "
                                 "crimson colour."),
                ("Entity Beta", "The Entity Beta is a building recognisable by "
                                f"{simulated.synthetic.SHAPE_TEXT['dome']} and a uniform "
                                "cobalt colour.")]
  perception = _undecided("tower", ("crimson",), "plain")
  assert _answer(monkeypatch, perception, candidates, "full") == "entity alpha"
  # Hidden summaries: neither candidate describes a look, so it names what it perceived
  # from what it knows (here the world's naming convention), not a candidate.
  bare = _answer(monkeypatch, perception, candidates, "none")
  assert bare == simulated.compose_title("tower", "crimson", "plain").casefold()
