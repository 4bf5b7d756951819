"""The entities of the embedded world: their kinds, looks, names, places, popularity and
Wikipedia text (`rew_jax.data.synthetic` writes the world from them).

The words here are the world's language: the KB's summaries describe looks with SHAPE_TEXT,
colour names and PATTERN_TEXT, which is also what the simulated LLM reads back. Titles are
proper names and the kind word ("Tarvo Tower"; `names="proper"`), or v1's descriptive ones
("Crimson Banded Kestrel"). Pure functions of the config and a numpy Generator.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Sequence

import numpy as np

from rew_jax.data import synthetic_images as si
from rew_jax.errors import ConfigError

# Category → (kind word, shape key). "Falcon" and "Comet" exist in two categories.
CATEGORIES = {
    "bird": (("Kestrel", "kestrel"), ("Warbler", "warbler"), ("Falcon", "falcon_bird")),
    "aircraft": (("Falcon", "falcon_aircraft"), ("Comet", "comet_aircraft"),
                 ("Condor", "condor")),
    "flower": (("Lotus", "lotus"), ("Aster", "aster"), ("Tulip", "tulip")),
    "building": (("Tower", "tower"), ("Dome", "dome"), ("Pagoda", "pagoda")),
    "fish": (("Comet", "comet_fish"), ("Marlin", "marlin")),
}
SHAPE_TEXT = {
    "kestrel": "a triangular silhouette", "warbler": "a rounded oval body",
    "falcon_bird": "a swept arrowhead outline", "falcon_aircraft": "a cross-shaped airframe",
    "comet_aircraft": "a slender diamond fuselage", "condor": "a broad flat wing",
    "lotus": "five pointed petals", "aster": "eight short petals", "tulip": "a cup-shaped bloom",
    "tower": "a tall narrow block", "dome": "a rounded cupola", "pagoda": "stacked tiers",
    "comet_fish": "a short body and a square tail", "marlin": "a long body and a pointed bill",
}
PATTERN_TEXT = {
    "plain": "a uniform {c} colour", "striped": "{c} colouring with thin {s} stripes",
    "banded": "{c} colouring with broad {s} bands", "spotted": "{c} colouring with {s} spots",
    "checkered": "a {c} and {s} checkered pattern",
}
ADJ = {"plain": "Plain", "striped": "Striped", "banded": "Banded", "spotted": "Spotted",
       "checkered": "Checkered"}
# Where look-alikes differ: the place a summary and some captions name.
PLACES = ("Ardwick", "Bellmoor", "Corran", "Dunhallow", "Eskerby", "Fenmouth", "Glenarrow",
          "Holmby", "Inverkell", "Kilbrae", "Lowick", "Marrowgate")
# Syllables of the invented proper names ("Tarvo", "Belmi"): two each, none a look word.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br",
           "dr", "gr", "kr", "st", "tr")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("l", "n", "r", "s", "m")
CONCEPTS = (
    ("Negative equity", "a financial situation in which a property is worth less than the "
     "loan secured on it"),
    ("Interest rate", "the amount a lender charges a borrower, as a proportion of the loan"),
    ("Summer solstice", "the day of the year with the longest period of daylight"),
    ("Remote work", "an arrangement in which employees work outside a central office"),
    ("Marathon", "a long-distance foot race of 42.195 kilometres"),
    ("Sourdough", "bread made by the fermentation of dough using wild yeast"),
    ("Inflation", "a general increase in the prices of goods and services"),
    ("Jazz", "a music genre that originated in New Orleans"),
    ("Photosynthesis", "the process by which plants turn light into chemical energy"),
    ("Chess opening", "the initial moves of a game of chess"),
    ("Cloud computing", "on-demand availability of computer system resources"),
    ("Minimalism", "a movement in art and design based on extreme simplicity"),
    ("Public holiday", "a day on which most businesses and schools are closed"),
    ("Coffee roasting", "the process of heating green coffee beans"),
    ("Election", "a formal group decision-making process to choose officials"),
    ("Housing market", "the supply of and demand for houses in a region"),
    ("Meditation", "a practice of focusing the mind on a particular object or activity"),
    ("Tax return", "a form on which a taxpayer reports income and taxes owed"),
    ("Podcast", "an episodic series of spoken-word digital audio files"),
    ("Board game", "a tabletop game played with counters moved on a board"),
)

@dataclasses.dataclass(frozen=True)
class Entity:
  entity_id: str
  title: str
  category: str          # "concept" for non-visual entities.
  shape: str = ""
  colour: str = ""       # "" for a generic entity: only its kind's shape describes it.
  pattern: str = ""
  seen: bool = True      # In OVEN's train split.
  on_web: bool = True    # Shown by web images and named by their captions.
  place: str = ""
  generic: bool = False  # "Tower": the kind, not a specific entity.
  web_weight: float = 0.0  # Its share of the web images (the power law's, before sampling).
  lookalike_of: str = ""   # The entity id of its look-alike pair.

  @property
  def look(self) -> si.Look:
    return si.Look(self.shape, self.colour, self.pattern)

  @property
  def specific(self) -> bool:
    """A visual entity with a look of its own (what images show and OVEN asks for)."""
    return self.category != "concept" and not self.generic

  @property
  def mention(self) -> str:
    """How a web caption names it: without the disambiguation parentheses."""
    return self.title.split(" (")[0]


def _second_word(colour: str) -> str:
  rgb = si.COLOURS[colour]
  return "dark" if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140 else "white"


def summary(e: Entity) -> str:
  if e.category == "concept":
    return dict(CONCEPTS)[e.title] + "."
  article = "an" if e.category[0] in "aeiou" else "a"  # The category's article.
  if e.generic:
    return (f"A {e.mention.lower()} is {article} {e.category} recognisable by "
            f"{SHAPE_TEXT[e.shape]}.")
  look = PATTERN_TEXT[e.pattern].format(c=e.colour, s=_second_word(e.colour))
  where = f" in {e.place}" if e.place else ""
  return (f"The {e.mention} is {article} {e.category}{where} recognisable by "
          f"{SHAPE_TEXT[e.shape]} and {look}.")


def _proper_names(rng: np.random.Generator, n: int) -> list[str]:
  """`n` distinct invented two-syllable names, none of them a word of the world's texts."""
  taken = {w.casefold() for w in (*si.COLOURS, *ADJ.values(), *PLACES)}
  taken |= {word.casefold() for shapes in CATEGORIES.values() for word, _ in shapes}
  names: list[str] = []
  while len(names) < n:
    parts = [rng.choice(_ONSETS), rng.choice(_VOWELS), rng.choice(_CODAS), rng.choice(_ONSETS),
             rng.choice(_VOWELS)]
    name = "".join(map(str, parts)).capitalize()
    if name.casefold() not in taken:
      taken.add(name.casefold())
      names.append(name)
  return names


def _near(value: str, pairs) -> str | None:
  for a, b in pairs:
    if value in (a, b):
      return b if value == a else a
  return None


def _looks(config, rng: np.random.Generator) -> list[tuple[str, str, str, str, str, int]]:
  """(category, kind word, shape, colour, pattern, pair index or -1) of every visual
  entity: distinct looks, then the look-alike pairs' second members."""
  combos = [(cat, word, shape, colour, pattern)
            for cat, shapes in CATEGORIES.items() for word, shape in shapes
            for colour in si.COLOURS for pattern in si.PATTERNS]
  if not 1 <= config.num_entities <= len(combos):
    raise ConfigError(f"world.num_entities must be in [1, {len(combos)}], got "
                      f"{config.num_entities}")
  pairs = int(config.lookalike_fraction * config.num_entities) // 2
  distinct = config.num_entities - pairs
  picked = [combos[k] for k in sorted(rng.choice(len(combos), distinct, replace=False))]
  out = [(*c, -1) for c in picked]
  used = set(picked)
  for j in rng.choice(distinct, pairs, replace=False):
    cat, word, shape, colour, pattern = picked[j]
    if rng.random() < config.lookalike_detail:  # A detail the pixels show weakly.
      options = [(cat, word, shape, c, pattern) for c in [_near(colour, si.SIMILAR_COLOURS)]
                 if c] + [(cat, word, shape, colour, p)
                          for p in [_near(pattern, si.SIMILAR_PATTERNS)] if p]
      options = [o for o in options if o not in used]
      if options:
        twin = options[int(rng.integers(len(options)))]
        used.add(twin)
        out.append((*twin, int(j)))
        continue
    out.append((cat, word, shape, colour, pattern, int(j)))  # The same look: only the place.
  return out


def make_entities(config) -> list[Entity]:
  """All KB entities: specific visual ones, generic ones (one per kind word), then concepts.
  Deterministic in the seed."""
  rng = np.random.default_rng([config.seed, 0])
  looks = _looks(config, rng)
  n = len(looks)
  shared_words = collections.Counter(w for shapes in CATEGORIES.values() for w, _ in shapes)
  generics = ([(cat, word, shape) for cat, shapes in CATEGORIES.items() for word, shape in shapes]
              if config.generic_concepts else [])
  ids = rng.choice(np.arange(1000, 10_000_000), n + len(generics) + len(CONCEPTS),
                   replace=False)
  proper = _proper_names(rng, n) if config.names == "proper" else []
  places = rng.choice(len(PLACES), n).tolist()
  # Web frequency: a power law over a random ranking.
  rank = rng.permutation(n)
  weight = (rank + 1.0) ** -config.zipf_exponent
  weight /= weight.sum()
  num_unseen = int(round(config.unseen_fraction * n))
  rarity = 1.0 / weight
  unseen_order = rng.choice(n, num_unseen, replace=False, p=rarity / rarity.sum()).tolist()
  unseen = set(unseen_order)
  zero_shot = set(unseen_order[:int(round(config.zero_shot_fraction * n))])
  web_weight = np.where([i in zero_shot for i in range(n)], 0.0, weight)
  web_weight /= max(web_weight.sum(), 1e-12)
  second_of = {pair: i for i, (*_, pair) in enumerate(looks) if pair >= 0}
  entities = []
  for i, (cat, word, shape, colour, pattern, pair) in enumerate(looks):
    mate = pair if pair >= 0 else second_of.get(i, -1)  # Its look-alike pair's index.
    if pair >= 0:  # A look-alike lives elsewhere than its pair.
      places[i] = (places[pair] + 1 + places[i] % (len(PLACES) - 1)) % len(PLACES)
    place = PLACES[places[i]] if config.names == "proper" or config.lookalike_fraction else ""
    if config.names == "proper":
      title = f"{proper[i]} {word}"
    else:
      title = f"{colour.capitalize()} {ADJ[pattern]} {word}"
      if shared_words[word] > 1:
        title += f" ({cat})"
      if pair >= 0 and looks[pair][3:5] == (colour, pattern):
        title += f" of {place}"  # Descriptive titles of identical looks need the place.
    entities.append(Entity(
        f"Q{ids[i]}", title, cat, shape, colour, pattern, seen=i not in unseen,
        on_web=i not in zero_shot, place=place, web_weight=float(web_weight[i]),
        lookalike_of=f"Q{ids[mate]}" if mate >= 0 else ""))
  for k, (cat, word, shape) in enumerate(generics):
    title = word + (f" ({cat})" if shared_words[word] > 1 else "")
    entities.append(Entity(f"Q{ids[n + k]}", title, cat, shape, generic=True))
  for j, (title, _) in enumerate(CONCEPTS):
    entities.append(Entity(f"Q{ids[n + len(generics) + j]}", title, "concept"))
  return entities


def similar_entities(entity: Entity, pool: Sequence[Entity]) -> list[Entity]:
  """Look-alikes of `entity` in `pool`, most confusable first: its pair, then those of the
  same category one attribute off (near colours or patterns before the others)."""
  near = {frozenset(p) for p in si.SIMILAR_COLOURS + si.SIMILAR_PATTERNS}
  pair, close, other = [], [], []
  for e in pool:
    if not e.specific or e.category != entity.category or e.entity_id == entity.entity_id:
      continue
    if e.entity_id == entity.lookalike_of:
      pair.append(e)
      continue
    diffs = [(a, b) for a, b in zip(entity.look, e.look) if a != b]
    if len(diffs) == 1:
      (close if frozenset(diffs[0]) in near else other).append(e)
  return pair + close + other


def kb_line(e: Entity, rng: np.random.Generator, num_web_images: int) -> dict:
  text = summary(e)
  if e.category == "concept":
    extra = " It is discussed widely in the press."
  elif e.generic:
    extra = " The term covers many named examples."
  else:
    # A public popularity figure, correlated with the web frequency (as page views are).
    photos = max(1, int(round(e.web_weight * num_web_images * 20 * rng.lognormal(0.0, 0.3))))
    extra = (f" It was first documented in {int(rng.integers(1850, 2020))}."
             f" Wikimedia Commons holds {photos} photographs of it.")
  return {"wikidata_id": e.entity_id, "wikipedia_title": e.title,
          "wikipedia_summary": text, "wikipedia_content": text + extra}
