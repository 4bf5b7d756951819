"""The embedded default world: a small, deterministic stand-in for Wiki6M + WebLI + OVEN.

Nothing can be downloaded here, so the demo and the tests run on a world generated from a
seed, written in the real file formats:

  <out>/kb/Wiki6M_ver_1_0.jsonl.gz          entity KB (wikidata_id, wikipedia_title, ...)
  <out>/kb/Wiki6M_ver_1_0_title_only.jsonl  the title-only variant
  <out>/web/captions.jsonl                  web image–caption pairs: what curation sees
  <out>/images/{xx}/{image_id}.jpg          every image, in OVEN's layout
  <out>/oven/oven_{entity,query}_{train,val,test}.jsonl   OVEN-format annotations
  <out>/truth/entities.jsonl, web_truth.jsonl   ground truth, kept apart from training
  <out>/world.json, contact_sheet.png       summary and a picture of samples

Entities. A visual entity's look is (shape, colour, pattern) and its title says so
compositionally, e.g. "Crimson Banded Kestrel": an unseen entity is a new combination of
seen words and looks, which is what makes the OVEN unseen split learnable at all. Two shape
words are shared across categories, giving Wikipedia-style disambiguated titles
("Cobalt Striped Falcon (bird)" / "... (aircraft)"). Summaries describe the look. A few
non-visual concept entities ("Negative equity") are what irrelevant captions talk about.

Web captions carry the paper's noise types at configured rates: a correct mention, an
irrelevant caption about something else, and a mention of a visually similar wrong entity
(one attribute off: often a near colour or pattern). Disambiguation parentheses never appear
in captions, as on the web. OVEN's "unseen" entities (`unseen_fraction`) are absent from
OVEN train only: the web data shows them under the same caption noise, as web-scale
pretraining data covers OVEN's unseen entities. `zero_shot_fraction` of them are absent
from the web data too (seen nowhere; 0 by default).

Knobs (config keys): num_entities, unseen_fraction, num_web_images, the caption rates,
OVEN split sizes, image size range. Harder: more entities, more similar_wrong/irrelevant
captions, smaller images. Generate with `python -m rew_jax world --workdir W`.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import io
import json
import math
import os
import time
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from rew_jax import config as config_lib
from rew_jax import workdir as workdir_lib
from rew_jax.data import synthetic_images as si
from rew_jax.errors import ConfigError

# Category → (name word, shape key). "Falcon" and "Comet" exist in two categories.
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
MENTION_TEMPLATES = (
    "{n} spotted near the old harbour", "Look at this {n}!", "my photo of the {n}, taken last spring",
    "The {n} at the city museum", "{n} on a sunny afternoon", "finally saw the {n} today",
    "{n} in the wild #nature", "close-up of the {n}",
)
IRRELEVANT_TEMPLATES = (
    "Why {c} matters this year", "Notes on {c} from yesterday's meeting",
    "Everything you need to know about {c}", "{c}: a beginner's guide",
)
GENERIC_CAPTIONS = ("best day ever", "weekend vibes #nofilter", "image may contain: outdoor",
                    "IMG_2043.JPG", "throwback to last summer", "click here for more photos")
ENTITY_QUESTIONS = ("what is this {cat}?", "which {cat} is this?",
                    "what is the name of this {cat}?", "what kind of {cat} is shown?")
QUERY_QUESTIONS = ("what is the {cat} on the {side}?", "which {cat} is on the {side}?",
                   "name the {cat} on the {side} of the picture.")
CAPTION_KINDS = ("correct", "similar_wrong", "irrelevant")
_STREAM = {"web": 1, "entity": 2, "query": 3}


def default_config() -> config_lib.ConfigDict:
  """The world of the demo: a few hundred entities, a few thousand web images."""
  c = config_lib.ConfigDict()
  c.seed = 0
  c.num_entities = 300          # Visual entities (of 14 shapes × 10 colours × 5 patterns).
  c.unseen_fraction = 0.2       # Entities absent from OVEN's train split (OVEN "unseen");
  #                               the web data shows them, as web-scale data does.
  c.zero_shot_fraction = 0.0    # Of all entities, those also absent from the web data: seen
  #                               nowhere (a subset of the unseen ones).
  c.num_web_images = 4000
  c.caption_rates = config_lib.ConfigDict(
      dict(correct=0.55, similar_wrong=0.25, irrelevant=0.20))
  c.oven = config_lib.ConfigDict(dict(entity_train=1000, entity_val=400, entity_test=400,
                                      query_train=400, query_val=200, query_test=200))
  c.min_image_size = 64
  c.max_image_size = 96
  c.jpeg_quality = 90
  c.contact_sheet = True
  return c


@dataclasses.dataclass(frozen=True)
class Entity:
  entity_id: str
  title: str
  category: str          # "concept" for non-visual entities.
  shape: str = ""
  colour: str = ""
  pattern: str = ""
  seen: bool = True      # In OVEN's train split.
  on_web: bool = True    # Shown by web images and named by their captions.

  @property
  def look(self) -> si.Look:
    return si.Look(self.shape, self.colour, self.pattern)

  @property
  def mention(self) -> str:
    """How a web caption names it: without the disambiguation parentheses."""
    return self.title.split(" (")[0]


def _summary(e: Entity) -> str:
  if e.category == "concept":
    return dict(CONCEPTS)[e.title] + "."
  rgb = si.COLOURS[e.colour]
  second = "dark" if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140 else "white"
  look = PATTERN_TEXT[e.pattern].format(c=e.colour, s=second)
  article = "an" if e.category[0] in "aeiou" else "a"
  return (f"The {e.mention} is {article} {e.category} recognisable by {SHAPE_TEXT[e.shape]} "
          f"and {look}.")


def make_entities(config) -> list[Entity]:
  """All KB entities: visual ones (sampled looks) then concepts. Deterministic in the seed."""
  rng = np.random.default_rng([config.seed, 0])
  combos = [(cat, word, shape, colour, pattern)
            for cat, shapes in CATEGORIES.items() for word, shape in shapes
            for colour in si.COLOURS for pattern in si.PATTERNS]
  if not 1 <= config.num_entities <= len(combos):
    raise ConfigError(f"world.num_entities must be in [1, {len(combos)}], got "
                      f"{config.num_entities}")
  picked = sorted(rng.choice(len(combos), config.num_entities, replace=False))
  shared_words = collections.Counter(w for shapes in CATEGORIES.values() for w, _ in shapes)
  ids = rng.choice(np.arange(1000, 10_000_000), config.num_entities + len(CONCEPTS),
                   replace=False)
  num_unseen = int(round(config.unseen_fraction * config.num_entities))
  unseen_order = rng.choice(config.num_entities, num_unseen, replace=False).tolist()
  unseen = set(unseen_order)
  zero_shot = set(unseen_order[:int(round(config.zero_shot_fraction * config.num_entities))])
  entities = []
  for i, k in enumerate(picked):
    cat, word, shape, colour, pattern = combos[k]
    title = f"{colour.capitalize()} {ADJ[pattern]} {word}"
    if shared_words[word] > 1:
      title += f" ({cat})"
    entities.append(Entity(f"Q{ids[i]}", title, cat, shape, colour, pattern,
                           seen=i not in unseen, on_web=i not in zero_shot))
  for j, (title, _) in enumerate(CONCEPTS):
    entities.append(Entity(f"Q{ids[config.num_entities + j]}", title, "concept"))
  return entities


def similar_entities(entity: Entity, pool: Sequence[Entity]) -> list[Entity]:
  """Same category, one attribute off; deliberately confusable ones (near colours or
  patterns) first."""
  near = {frozenset(p) for p in si.SIMILAR_COLOURS + si.SIMILAR_PATTERNS}
  close, other = [], []
  for e in pool:
    if e.category != entity.category or e.entity_id == entity.entity_id:
      continue
    diffs = [(a, b) for a, b in zip(entity.look, e.look) if a != b]
    if len(diffs) == 1:
      (close if frozenset(diffs[0]) in near else other).append(e)
  return close + other


def _kb_line(e: Entity, rng: np.random.Generator) -> dict:
  summary = _summary(e)
  extra = (f" It was first documented in {int(rng.integers(1850, 2020))}."
           f" Records list {int(rng.integers(2, 400))} known sightings."
           if e.category != "concept" else " It is discussed widely in the press.")
  return {"wikidata_id": e.entity_id, "wikipedia_title": e.title,
          "wikipedia_summary": summary, "wikipedia_content": summary + extra}


def image_relpath(image_id: str) -> str:
  """OVEN's image layout: images/{first two digits of the number}/{image_id}.jpg."""
  return os.path.join("images", image_id.split("_")[-1][:2], image_id + ".jpg")


def _caption(entity: Entity, kind: str, rng: np.random.Generator, pool: Sequence[Entity],
             concepts: Sequence[Entity]) -> tuple[str, str | None]:
  """A web caption of the given noise kind → (text, id of the entity it mentions)."""
  if kind == "irrelevant":
    if rng.random() < 0.3:
      return str(rng.choice(GENERIC_CAPTIONS)), None
    concept = concepts[int(rng.integers(len(concepts)))]
    name = concept.title if rng.random() < 0.5 else concept.title.lower()
    return str(rng.choice(IRRELEVANT_TEMPLATES)).format(c=name), concept.entity_id
  mentioned = entity
  if kind == "similar_wrong":
    options = similar_entities(entity, pool)
    near = [e for e in options[:3]]
    if not options:  # No one-attribute neighbour: any other entity of the category.
      options = [e for e in pool if e.category == entity.category and e != entity]
    mentioned = (near[int(rng.integers(len(near)))] if near and rng.random() < 0.7
                 else options[int(rng.integers(len(options)))])
  name = mentioned.mention.lower() if rng.random() < 0.3 else mentioned.mention
  return str(rng.choice(MENTION_TEMPLATES)).format(n=name), mentioned.entity_id


def _write_jsonl(path: str, rows) -> int:
  count = 0
  with open(path, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False) + "\n")
      count += 1
  return count


def _write_image(out_dir: str, image_id: str, pixels: np.ndarray, quality: int) -> str:
  rel = image_relpath(image_id)
  path = os.path.join(out_dir, rel)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(si.encode_jpeg(pixels, quality))
  return rel


class _Ids:
  """Sequential OVEN-style image ids shared by all splits (oven_00000000, ...)."""

  def __init__(self, prefix: str):
    self.prefix, self.n = prefix, 0

  def __call__(self) -> str:
    self.n += 1
    return f"{self.prefix}_{self.n - 1:08d}"


def _oven_split(out_dir, config, kind: str, split: str, count: int, entities, ids, truth_pool):
  """Rows of oven_{kind}_{split}.jsonl; val/test are half seen, half unseen entities."""
  rng = np.random.default_rng([config.seed, _STREAM[kind], hash_split(split)])
  seen = [e for e in truth_pool if e.seen]
  unseen = [e for e in truth_pool if not e.seen]
  for i in range(count):
    if split == "train" or not unseen:
      group, pool = "", seen
    else:
      group, pool = ("_seen", seen) if i % 2 == 0 else ("_unseen", unseen)
    truth = pool[int(rng.integers(len(pool)))]
    image_id = ids()
    if kind == "entity":
      looks = [truth.look]
      question = str(rng.choice(ENTITY_QUESTIONS)).format(cat=truth.category)
    else:
      other = entities[int(rng.integers(len(entities)))]
      left = rng.random() < 0.5
      looks = [truth.look, other.look] if left else [other.look, truth.look]
      question = str(rng.choice(QUERY_QUESTIONS)).format(
          cat=truth.category, side="left" if left else "right")
    pixels = si.draw(looks, rng, min_size=config.min_image_size, max_size=config.max_image_size)
    _write_image(out_dir, image_id, pixels, config.jpeg_quality)
    yield {"data_id": f"oven_{kind}_{split}_{i:08d}", "image_id": image_id,
           "question": question, "entity_id": truth.entity_id, "entity_text": truth.title,
           "data_split": f"{kind}_{split}{group}"}


def hash_split(split: str) -> int:
  return {"train": 0, "val": 1, "test": 2}[split]


def _validate(config) -> None:
  rates = dict(config.caption_rates)
  if set(rates) != set(CAPTION_KINDS):
    raise ConfigError(f"world.caption_rates needs exactly {CAPTION_KINDS}, got {sorted(rates)}")
  if any(r < 0 for r in rates.values()) or not math.isclose(sum(rates.values()), 1.0,
                                                            abs_tol=1e-6):
    raise ConfigError(f"world.caption_rates must be >= 0 and sum to 1, got {rates}")
  if not 0 <= config.unseen_fraction < 1:
    raise ConfigError(f"world.unseen_fraction must be in [0, 1), got {config.unseen_fraction}")
  if not 0 <= config.zero_shot_fraction <= config.unseen_fraction:
    raise ConfigError("world.zero_shot_fraction must be in [0, unseen_fraction], got "
                      f"{config.zero_shot_fraction}")
  if not 16 <= config.min_image_size <= config.max_image_size:
    raise ConfigError("world needs 16 <= min_image_size <= max_image_size")


def generate(config, out_dir: str) -> dict:
  """Writes the world into `out_dir` (created) and returns its summary (also world.json)."""
  _validate(config)
  start = time.time()
  entities = make_entities(config)
  visual = [e for e in entities if e.category != "concept"]
  seen = [e for e in visual if e.seen]
  on_web = [e for e in visual if e.on_web]
  concepts = [e for e in entities if e.category == "concept"]
  for sub in ("kb", "web", "oven", "truth", "images"):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)

  # ---- Knowledge base (gzip without a timestamp so the bytes depend on the seed only).
  kb_rng = np.random.default_rng([config.seed, 4])
  with open(workdir_lib.world_kb_file(out_dir), "wb") as raw:
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
      for e in entities:
        gz.write((json.dumps(_kb_line(e, kb_rng), ensure_ascii=False) + "\n").encode())
  _write_jsonl(os.path.join(out_dir, "kb", "Wiki6M_ver_1_0_title_only.jsonl"),
               ({"wikidata_id": e.entity_id, "wikipedia_title": e.title} for e in entities))
  _write_jsonl(os.path.join(out_dir, "truth", "entities.jsonl"),
               (dataclasses.asdict(e) for e in entities))

  # ---- Web image–caption pairs; truth goes to a separate file.
  kinds = list(config.caption_rates.keys())
  probs = np.array([config.caption_rates[k] for k in kinds])
  web_rows, truth_rows = [], []
  for i in range(config.num_web_images):
    rng = np.random.default_rng([config.seed, _STREAM["web"], i])
    entity = on_web[int(rng.integers(len(on_web)))]
    kind = kinds[int(rng.choice(len(kinds), p=probs))]
    caption, mentioned = _caption(entity, kind, rng, on_web, concepts)
    image_id = f"web_{i:08d}"
    pixels = si.draw([entity.look], rng, min_size=config.min_image_size,
                     max_size=config.max_image_size)
    rel = _write_image(out_dir, image_id, pixels, config.jpeg_quality)
    web_rows.append({"image_id": image_id, "caption": caption, "image_path": rel})
    truth_rows.append({"image_id": image_id, "entity_id": entity.entity_id,
                       "caption_kind": kind, "mentioned_entity_id": mentioned})
  _write_jsonl(os.path.join(out_dir, "web", "captions.jsonl"), web_rows)
  _write_jsonl(os.path.join(out_dir, "truth", "web_truth.jsonl"), truth_rows)

  # ---- OVEN annotations.
  ids = _Ids("oven")
  split_counts = {}
  for kind in ("entity", "query"):
    for split in ("train", "val", "test"):
      count = config.oven[f"{kind}_{split}"]
      rows = list(_oven_split(out_dir, config, kind, split, count, visual, ids, visual))
      _write_jsonl(os.path.join(out_dir, "oven", f"oven_{kind}_{split}.jsonl"), rows)
      for row in rows:
        split_counts[row["data_split"]] = split_counts.get(row["data_split"], 0) + 1

  realised = collections.Counter(r["caption_kind"] for r in truth_rows)
  summary = {
      "seed": config.seed,
      "entities": {"visual": len(visual), "seen": len(seen), "unseen": len(visual) - len(seen),
                   "on_web": len(on_web), "zero_shot": len(visual) - len(on_web),
                   "concepts": len(concepts),
                   "per_category": dict(collections.Counter(e.category for e in visual))},
      "web_images": config.num_web_images,
      "caption_rates": {"configured": dict(config.caption_rates),
                        "realised": {k: realised[k] / max(1, len(truth_rows))
                                     for k in CAPTION_KINDS}},
      "oven_examples": dict(sorted(split_counts.items())),
      "config": config.to_dict(),
  }
  with open(os.path.join(out_dir, "world.json"), "w") as f:
    json.dump(summary, f, indent=1, sort_keys=True)
  if config.contact_sheet:
    contact_sheet(out_dir, os.path.join(out_dir, "contact_sheet.png"))
  summary["seconds"] = round(time.time() - start, 2)
  return summary


# ----------------------------------------------------------------------------- reading back


def read_jsonl(path: str) -> Iterator[dict]:
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        yield json.loads(line)


def load_entities(world_dir: str) -> list[Entity]:
  return [Entity(**row) for row in read_jsonl(os.path.join(world_dir, "truth", "entities.jsonl"))]


def contact_sheet(world_dir: str, path: str, cols: int = 6, rows: int = 4) -> None:
  """A grid of web images with their true entity and their caption's noise kind."""
  entities = {e.entity_id: e for e in load_entities(world_dir)}
  truth = list(read_jsonl(os.path.join(world_dir, "truth", "web_truth.jsonl")))[:cols * rows]
  cell_w, img_h, text_h = 150, 96, 40
  sheet = Image.new("RGB", (cols * cell_w, rows * (img_h + text_h)), "white")
  draw = ImageDraw.Draw(sheet)
  font = ImageFont.load_default(size=11)
  colours = {"correct": (20, 120, 40), "similar_wrong": (190, 90, 0), "irrelevant": (170, 20, 20)}
  for k, t in enumerate(truth):
    x, y = (k % cols) * cell_w, (k // cols) * (img_h + text_h)
    img = Image.open(os.path.join(world_dir, image_relpath(t["image_id"]))).convert("RGB")
    img.thumbnail((cell_w - 6, img_h - 4))
    sheet.paste(img, (x + 3, y + 2))
    title = entities[t["entity_id"]].title
    words, lines = title.split(), [""]
    for w in words:
      if len(lines[-1]) + len(w) > 22:
        lines.append("")
      lines[-1] = (lines[-1] + " " + w).strip()
    for j, line in enumerate(lines[:2]):
      draw.text((x + 3, y + img_h + 1 + 12 * j), line, fill="black", font=font)
    draw.text((x + 3, y + img_h + 26), f"caption: {t['caption_kind']}",
              fill=colours[t["caption_kind"]], font=font)
  buf = io.BytesIO()
  sheet.save(buf, format="PNG")
  with open(path, "wb") as f:
    f.write(buf.getvalue())


def format_summary(summary: dict) -> str:
  e, rates = summary["entities"], summary["caption_rates"]
  lines = [
      f"embedded world (seed {summary['seed']}): {e['visual']} visual entities "
      f"({e['seen']} in OVEN train, {e['unseen']} unseen there; {e.get('zero_shot', 0)} "
      f"absent from the web data too) + {e['concepts']} concepts; "
      f"per category {e['per_category']}",
      f"web images: {summary['web_images']}; caption noise (configured → realised): " +
      ", ".join(f"{k} {rates['configured'][k]:.2f}→{rates['realised'][k]:.3f}"
                for k in CAPTION_KINDS),
      "OVEN examples: " + ", ".join(f"{k} {v}" for k, v in summary["oven_examples"].items()),
  ]
  return "\n".join(lines)
