"""`simulated`: a stand-in multimodal LLM for the embedded world that looks at the image.

It sees what a real model sees: the image bytes and the prompt text (the caption, and the
candidates with their Wikipedia-style summaries, as far as the prompt's context shows them).
It never reads the world's ground truth and is never given the world directory. Its answer
is a mechanism, not a rate:

  1. perceive  `rew_jax.curation.perceiver` estimates the object's shape, colour and
               pattern from the pixels, as distributions over the named words;
  2. recall    what it knows from "pretraining" (`kb_path`, the world's public Wiki6M file):
               the look and place of a share `knows` of the KB's specific entities, drawn
               toward the popular ones (the KB's "Wikimedia Commons holds N photographs"),
               and every generic concept ("Tower"). Of the others it knows nothing, not even
               that they exist;
  3. read      each candidate's look and place from its summary when the prompt shows it;
               else from memory when it knows the entity; else only the kind word of its
               name ("... Tower": a tower);
  4. weigh     score = log p(described look | image) + a prior for being a candidate + a
               prior for the entity the caption names + a prior for an entity whose place
               the caption names − a penalty for a generic answer (the prompt asks for the
               most specific entity); every known entity outside the candidates competes;
  5. answer    the best-scoring entity, or "none" when its share of the posterior is small.

So the paper's failure modes arise from knowledge and context, never from a configured error
rate: `direct` prompts (no caption, no candidates) can only name what the model knows, so
an unknown entity comes out as a known look-alike (hallucinated), the generic concept
(overly generic) or "none"; correction without context can keep a candidate it cannot check
but cannot read an unknown one's look; with the summaries and the caption it reads every
candidate's look and place. With `kb_path="none"` it knows nothing beyond the prompt and
names entities outside the candidates by composing the world's v1 descriptive titles.
Rationales and QA pairs state what was perceived, right or wrong.

What stays seeded per request (a hash of seed, image id, prompt kind and attempt) is only the
reply's form, which exercises the parser: `malformed` (truncated or mistyped JSON) and
`refusal` rates per attempt (a parse retry may recover), prose or code-fence wrapping, and
candidate names copied in lower case or without an unneeded "(...)". `latency_s` sleeps
per call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import threading
import time
from typing import Iterable, Sequence

import numpy as np

from rew_jax import config as config_lib
from rew_jax import registry
from rew_jax.curation import perceiver
from rew_jax.curation.backends.base import Backend, BackendError, Reply
from rew_jax.curation.prompts import Prompt
from rew_jax.data import synthetic
from rew_jax.data import synthetic_images as si

CANDIDATE_PRIOR = 3.0  # Log-odds for an entity the retrieval proposed over one it did not.
CAPTION_PRIOR = 2.0    # Log-odds for the entity the caption names.
PLACE_PRIOR = 2.5      # Log-odds for an entity whose place the caption names (where a photo
#                        was taken outweighs a name the page may have got wrong).
GENERIC_PENALTY = 1.0  # Log-odds against a generic concept ("Tower"): the prompt asks for
#                        the most specific entity.
MIN_POSTERIOR = 0.3    # Below this share of the posterior the model answers "none".

_QUOTED = r'"(?:[^"\\]|\\.)*"'
_CANDIDATE_LINE = re.compile(rf"^\d+\. ({_QUOTED})(?:: ({_QUOTED}))?\s*$", re.MULTILINE)
_CAPTION = re.compile(rf"^Caption: ({_QUOTED})\s*$", re.MULTILINE)
_NUM_QA = re.compile(r"\b(\d+) question")
# "The image shows NAME (SUMMARY)." or, when the prompt's context hides summaries, "... NAME.".
_SHOWN = re.compile(r"The image shows (.+?)(?: \(((?:(?:The|An?) .*)?)\))?\.?\s*$", re.MULTILINE)

# The words the knowledge base describes looks with, read back from text.
_SHAPE_BY_TEXT = {text: shape for shape, text in synthetic.SHAPE_TEXT.items()}
_CATEGORY_OF = {shape: cat for cat, shapes in synthetic.CATEGORIES.items() for _, shape in shapes}
_WORD_OF = {shape: word for shapes in synthetic.CATEGORIES.values() for word, shape in shapes}
_SHARED_WORDS = {w for w in _WORD_OF.values() if list(_WORD_OF.values()).count(w) > 1}
_PATTERN_WORDS = (("checkered", "checkered"), ("stripes", "striped"), ("bands", "banded"),
                  ("spots", "spotted"), ("uniform", "plain"))
_ADJ_TO_PATTERN = {adj.lower(): p for p, adj in synthetic.ADJ.items()}
_SECOND_WORD = {"white": "white", "black": "dark"}
_PLACE = re.compile(r"\bin ([A-Z][a-z]+(?: [A-Z][a-z]+)?) recognisable by")
_PHOTOS = re.compile(r"holds (\d+) photographs")


@dataclasses.dataclass(frozen=True)
class Described:
  """An entity as the model knows it from text: its name and the look it is described by."""
  name: str
  shape: str | None = None
  colour: str | None = None
  pattern: str | None = None
  place: str | None = None
  generic: bool = False  # Its text describes a kind ("A tower is ..."), not one entity.

  @property
  def visual(self) -> bool:
    return any((self.shape, self.colour, self.pattern))


def describe(name: str, summary: str = "") -> Described:
  """The look a name and summary describe: shape, colour and pattern words (None where the
  text names none). Summaries are read first; the name's words fill what they lack."""
  flat = " ".join(summary.split())
  full = flat.casefold()
  m = _PLACE.search(flat)
  place = m.group(1) if m else None
  generic = bool(re.match(r"an? [a-z]+ is an? ", full))  # "A tower is a building ..."
  text = full.split("recognisable by", 1)[-1]  # The look, not the name it repeats.
  shape = next((s for t, s in _SHAPE_BY_TEXT.items() if t in text), None)
  colour = next((c for c in si.COLOURS if re.search(rf"\b{c}\b", text)), None)
  pattern = next((p for w, p in _PATTERN_WORDS if w in text), None)
  words = re.findall(r"[a-z]+", name.casefold())
  if colour is None:
    colour = next((w for w in words if w in si.COLOURS), None)
  if pattern is None:
    pattern = next((_ADJ_TO_PATTERN[w] for w in words if w in _ADJ_TO_PATTERN), None)
  if shape is None:
    options_ = [s for s, w in _WORD_OF.items() if w.casefold() in words]
    if len(options_) > 1:  # "Falcon": the "(bird)" / "(aircraft)" or the summary decides.
      options_ = [s for s in options_ if _CATEGORY_OF[s] in words + full.split()] or options_
    shape = options_[0] if len(options_) == 1 else None
  return Described(name, shape, colour, pattern, place, generic)


def compose_title(shape: str, colour: str, pattern: str) -> str:
  """The title the world's naming convention gives a look ("Crimson Banded Kestrel")."""
  word = _WORD_OF[shape]
  title = f"{colour.capitalize()} {synthetic.ADJ[pattern]} {word}"
  return title + (f" ({_CATEGORY_OF[shape]})" if word in _SHARED_WORDS else "")


def look_log_prob(p: perceiver.Perception, d: Described) -> float:
  """log p(described look | image); an attribute the text does not name counts as chance."""
  total = 0.0
  for attr, vocab in (("shape", perceiver.SHAPES), ("colour", perceiver.COLOURS),
                      ("pattern", perceiver.PATTERNS)):
    value = getattr(d, attr)
    dist = getattr(p, attr)
    total += math.log((dist.get(value, 0.0) if value else 1.0 / len(vocab)) + 1e-6)
  return total


@dataclasses.dataclass(frozen=True)
class Choice:
  name: str          # The answer: an entity name, or "none".
  described: Described | None
  posterior: float
  source: str        # candidate | knowledge | composed | none
  named_in_caption: bool = False


def _mentioned(name: str, caption: str) -> bool:
  mention = name.split(" (")[0].casefold()
  return bool(mention) and mention in caption.casefold()


def _prior(d: Described, caption: str) -> tuple[float, bool]:
  """(log-odds from the caption and the answer's specificity, whether the caption names it)."""
  named = bool(caption) and not d.generic and _mentioned(d.name, caption)
  placed = bool(caption and d.place) and d.place.casefold() in caption.casefold()
  return (CAPTION_PRIOR * named + PLACE_PRIOR * placed - GENERIC_PENALTY * d.generic), named


def choose(p: perceiver.Perception, candidates: Sequence[Described], caption: str,
           known: Iterable[tuple[Described, str]]) -> Choice:
  """The entity a model that perceived `p` picks from the candidates (in prompt order) and
  from what it knows beyond them (`known`: (entity, source) pairs)."""
  if not p.found:
    return Choice("none", None, 0.0, "none")
  pool, scores, sources, named = [], [], [], []
  seen = set()
  for d in candidates:
    if not d.visual:  # A concept ("Negative equity") never describes an object.
      continue
    seen.add(d.name.casefold())
    prior, is_named = _prior(d, caption)
    pool.append(d)
    scores.append(look_log_prob(p, d) + CANDIDATE_PRIOR + prior)
    sources.append("candidate")
    named.append(is_named)
  for d, source in known:
    if d.visual and d.name.casefold() not in seen:
      prior, _ = _prior(d, caption)
      pool.append(d)
      scores.append(look_log_prob(p, d) + prior)
      sources.append(source)
      named.append(False)
  if not pool:
    return Choice("none", None, 0.0, "none")
  s = np.array(scores)
  post = np.exp(s - s.max())
  post /= post.sum()
  i = int(np.argmax(s))
  if post[i] < MIN_POSTERIOR:
    return Choice("none", pool[i], float(post[i]), "none")
  return Choice(pool[i].name, pool[i], float(post[i]), sources[i], named[i])


def composed_vocabulary() -> list[tuple[Described, str]]:
  """Every look the named words can make, under its conventional title."""
  return [(Described(compose_title(s, c, p), s, c, p), "composed")
          for s in perceiver.SHAPES for c in perceiver.COLOURS for p in perceiver.PATTERNS]


# --------------------------------------------------------------------------- what is said


def _perceived(p: perceiver.Perception) -> tuple[str, str, str, str, str]:
  shape, colour, pattern = p.best("shape"), p.best("colour"), p.best("pattern")
  second = _SECOND_WORD.get(p.features.get("secondary") or "", "white")
  look = synthetic.PATTERN_TEXT[pattern].format(c=colour, s=second)
  return shape, colour, pattern, _CATEGORY_OF[shape], look


def rationale_for(p: perceiver.Perception, name: str, d: Described | None) -> str:
  """Why the image shows `name`, from what was perceived (right or wrong)."""
  if not p.found:
    return f"The object in the image is hard to make out; it is taken to be the {name}."
  shape, colour, pattern, category, look = _perceived(p)
  same = d is not None and (d.shape, d.colour, d.pattern) == (shape, colour, pattern)
  verdict = "match" if same else "come closest to"
  return (f"The {category} in the image has {synthetic.SHAPE_TEXT[shape]} and {look}. "
          f"That shape and colouring {verdict} the description of the {name}.")


def qa_for(p: perceiver.Perception, n: int, rng: np.random.Generator) -> list[dict]:
  if not p.found or n <= 0:
    return []
  shape, colour, pattern, category, _ = _perceived(p)
  pool = [
      (f"What colour is the {category}?", colour),
      (f"What pattern covers the {category}?",
       "none, it is plain" if pattern == "plain" else pattern),
      (f"What is the outline of the {category} like?", synthetic.SHAPE_TEXT[shape]),
      ("What kind of thing is shown?", category),
      (f"Is the {category} striped?", "yes" if pattern == "striped" else "no"),
  ]
  order = rng.permutation(len(pool))[:n]
  return [{"question": pool[i][0], "answer": pool[i][1]} for i in order]


def justification_for(p: perceiver.Perception, c: Choice) -> str:
  if not p.found:
    return "I cannot make out an object in the image."
  shape, colour, pattern, category, _ = _perceived(p)
  seen = f"The image shows a {colour} {pattern} {category} with {synthetic.SHAPE_TEXT[shape]}"
  if c.source == "none":
    return seen + "; nothing I know matches it well enough."
  if c.source == "candidate":
    why = " and the caption names it" if c.named_in_caption else ""
    return seen + f"; the candidate {c.name} is described that way{why}."
  return seen + f"; none of the candidates is, but the {c.name} is."


def _rng(*parts) -> np.random.Generator:
  digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
  return np.random.default_rng(int.from_bytes(digest[:8], "little"))


@registry.CURATION_BACKENDS.register("simulated")
class SimulatedLLM(Backend):
  """See the module docstring. `kb_path`: a Wiki6M jsonl(.gz) file the model knows."""
  name = "simulated"

  @classmethod
  def default_config(cls) -> config_lib.ConfigDict:
    return config_lib.ConfigDict(dict(
        seed=0,          # Seeds the form of the replies only (faults, wrapping, name case).
        # The Wiki6M file it knows. "" in a config: the curation's KB (filled in by
        # `section.backend_options`); "" or "none" here: none, names are composed.
        kb_path="",
        # Share of the KB's specific entities whose look and place it knows, drawn toward
        # the popular ones (1.0: all; generic concepts are always known).
        knows=0.5,
        malformed=0.04,  # Share of replies with truncated or mistyped JSON, per attempt.
        refusal=0.01,    # Share of refusals, per attempt.
        latency_s=0.0))  # Sleep per call.

  def __init__(self, **kwargs):
    self.cfg = self.options(kwargs)
    for key in ("malformed", "refusal", "knows"):
      if not 0.0 <= self.cfg[key] <= 1.0:
        raise BackendError(f"curation backend 'simulated': {key} must be in [0, 1]")
    self._known = None
    self._by_name: dict[str, Described] = {}
    self._lock = threading.Lock()

  def known(self) -> list[tuple[Described, str]]:
    """What the model can name beyond the prompt (read once): the generic concepts and a
    popularity-weighted share `knows` of the KB's specific visual entities; without a KB,
    every composable title."""
    with self._lock:
      if self._known is None:
        if self.cfg["kb_path"] not in ("", "none"):
          self._known = self._recall()
        else:
          self._known = composed_vocabulary()
        self._by_name = {d.name.casefold(): d for d, _ in self._known}
      return self._known

  def _recall(self) -> list[tuple[Described, str]]:
    from rew_jax.kb import wiki6m  # pylint: disable=g-import-not-at-top
    try:
      entries = [(describe(e.title, e.summary), e.content) for e in wiki6m.read_wiki6m(
          self.cfg["kb_path"], skip_bad=True, with_content=True)]
    except wiki6m.KBFormatError as e:
      raise BackendError(f"curation backend 'simulated': kb_path: {e}") from None
    generic = [d for d, _ in entries if d.visual and d.generic]
    specific = [(d, c) for d, c in entries if d.visual and not d.generic]
    # Popularity from the KB's public text (1 where it states none): the web's frequent
    # entities are what a model learns in pretraining.
    weight = np.array([float(m.group(1)) if (m := _PHOTOS.search(c)) else 1.0
                       for _, c in specific]) + 1e-9
    count = int(round(self.cfg["knows"] * len(specific)))
    picked = _rng(self.cfg["seed"], "knowledge").choice(
        len(specific), count, replace=False, p=weight / weight.sum()) if count else []
    return [(specific[i][0], "knowledge") for i in sorted(picked)] + [
        (d, "knowledge") for d in generic]

  def _candidate(self, name: str, summary: str) -> Described:
    """A listed candidate as the model reads it: from its summary when shown, else from
    memory when it knows it, else from the name alone."""
    if summary:
      return describe(name, summary)
    self.known()  # Fills `_by_name` on first use.
    return self._by_name.get(name.casefold()) or describe(name)

  # -- The answer.

  def _payload(self, prompt: Prompt) -> dict:
    p = perceiver.perceive(prompt.image)
    rng = _rng(self.cfg["seed"], "qa", prompt.image_id)
    m = _NUM_QA.search(prompt.text)
    num_qa = int(m.group(1)) if m else 3
    if prompt.kind == "rationale":
      m = _SHOWN.search(prompt.text)
      name, summary = (m.group(1), m.group(2) or "") if m else ("entity", "")
      return {"rationale": rationale_for(p, name, describe(name, summary))}
    if prompt.kind == "qa":
      return {"qa": qa_for(p, num_qa, rng)}
    # Only what the prompt text holds: a direct prompt lists no candidates and no caption,
    # and a prompt whose context hides the summaries or the caption lists none of them.
    candidates = [self._candidate(json.loads(n), json.loads(s) if s else "")
                  for n, s in _CANDIDATE_LINE.findall(prompt.text)]
    m = _CAPTION.search(prompt.text)
    caption = json.loads(m.group(1)) if m else ""
    choice = choose(p, candidates, caption, self.known())
    payload = {"entity_name": self._written(choice, prompt, [d.name for d in candidates]),
               "justification": justification_for(p, choice)}
    if prompt.kind == "one_call":
      payload["rationale"] = (rationale_for(p, choice.name, choice.described)
                              if choice.source != "none" else "")
      payload["qa"] = qa_for(p, num_qa, rng)
    return payload

  def _written(self, choice: Choice, prompt: Prompt, names: Sequence[str]) -> str:
    """How a name copied from the candidate list is written: sometimes in lower case, or
    without its "(...)" when no other listed name needs it, as models do."""
    rng = _rng(self.cfg["seed"], "name", prompt.image_id)
    if choice.source != "candidate" or rng.random() >= 0.3:
      return choice.name
    base = choice.name.split(" (")[0]
    if rng.random() < 0.5 and sum(n.split(" (")[0] == base for n in names) == 1:
      return base
    return choice.name.lower()

  def generate(self, prompt: Prompt, timeout_s: float) -> Reply:
    if self.cfg["latency_s"]:
      time.sleep(self.cfg["latency_s"])
    text = self._render(prompt, self._payload(prompt))
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
