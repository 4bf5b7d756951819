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

Entities. A visual entity's look is (shape, colour, pattern); images draw it under nuisance
variation (`synthetic_images`). World v2 (the default) has what makes real entity
recognition hard, each a knob:

  names="proper"         a title is an invented proper name and the kind word ("Tarvo
                         Tower"), as Wikipedia titles are: it does not describe the look,
                         which only the entity's Wikipedia summary states. ("descriptive":
                         v1's compositional "Crimson Banded Kestrel", where a model can
                         compose the name of an entity it never saw.)
  lookalike_fraction     the share of entities in look-alike pairs: same shape and colour,
                         and either the same pattern (only the place, which the summary and
                         some captions state, tells them apart) or, for `lookalike_detail`
                         of the pairs, a near colour or pattern the pixels show weakly.
  generic_concepts       one generic entity per kind word ("Tower", "Falcon (bird)") beside
                         the specific ones; `generic` captions name it ("a tower at dusk").
                         An answer that is right but not specific is wrong for OVEN.
  zipf_exponent          web frequency follows a power law over a random ranking of the
                         entities (1.0: the 60th of 60 entities has ~1/60 of the first's
                         images); OVEN's unseen entities are drawn toward the rare end. The
                         KB states each entity's popularity ("Wikimedia Commons holds N
                         photographs of it"), a public signal correlated with it.

Web captions carry the paper's noise types at configured rates (`caption_rates`): a correct
mention, a mention of a look-alike wrong entity (its pair first, else one attribute off),
an irrelevant caption about a non-visual concept ("Negative equity") or about nothing, and a
generic mention. `place_in_caption` of the mentions also say where the photo was taken.
Disambiguation parentheses never appear in captions, as on the web. OVEN's "unseen" entities
(`unseen_fraction`) are absent from OVEN train only: the web data shows them under the same
caption noise, as web-scale pretraining data covers OVEN's unseen entities.
`zero_shot_fraction` of them are absent from the web data too (seen nowhere; 0 by default).

The v1 world is `names="descriptive", lookalike_fraction=0, generic_concepts=False,
zipf_exponent=0, place_in_caption=0` and no `generic` captions. Generate with
`python -m rew_jax world --workdir W`.
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
from rew_jax.data.synthetic_entities import (  # The world's entities and words, re-exported.
    ADJ, CATEGORIES, CONCEPTS, PATTERN_TEXT, PLACES, SHAPE_TEXT, Entity, kb_line,
    make_entities, similar_entities, summary)
from rew_jax.errors import ConfigError

MENTION_TEMPLATES = (
    "{n} spotted near the old harbour", "Look at this {n}!", "my photo of the {n}, taken last spring",
    "The {n} at the city museum", "{n} on a sunny afternoon", "finally saw the {n} today",
    "{n} in the wild #nature", "close-up of the {n}",
)
PLACE_TEMPLATES = ("{n}, seen on our trip to {p}", "{n} in {p} this morning",
                   "visiting {p}: the {n}", "the {n} near {p} station")
GENERIC_TEMPLATES = ("a beautiful {g}", "what a {g}!", "old {g} at sunset",
                     "another {g} for the collection")
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
CAPTION_KINDS = ("correct", "similar_wrong", "irrelevant", "generic")
_STREAM = {"web": 1, "entity": 2, "query": 3}


def default_config() -> config_lib.ConfigDict:
  """World v2: a few hundred entities with proper names, look-alikes, generic concepts and
  a long tail, a few thousand web images."""
  c = config_lib.ConfigDict()
  c.seed = 0
  c.num_entities = 300          # Visual entities (looks of 14 shapes × 10 colours × 5 patterns).
  c.names = "proper"            # proper ("Tarvo Tower") | descriptive ("Crimson Banded Kestrel").
  c.lookalike_fraction = 0.2    # Share of the entities in look-alike pairs.
  c.lookalike_detail = 0.5      # Of the pairs, those differing in a near colour or pattern
  #                               (the others differ only in place).
  c.generic_concepts = True     # "Tower", "Falcon (bird)", ... beside the specific entities.
  c.zipf_exponent = 1.0         # Web frequency ∝ rank^-s (0: every entity alike).
  c.unseen_fraction = 0.2       # Entities absent from OVEN's train split (OVEN "unseen"),
  #                               drawn toward the rare end; the web data shows them.
  c.zero_shot_fraction = 0.0    # Of all entities, those also absent from the web data: seen
  #                               nowhere (a subset of the unseen ones).
  c.num_web_images = 4000
  c.caption_rates = config_lib.ConfigDict(
      dict(correct=0.45, similar_wrong=0.25, irrelevant=0.15, generic=0.15))
  c.place_in_caption = 0.5      # Of the mentions, those that say where the photo was taken.
  c.oven = config_lib.ConfigDict(dict(entity_train=1000, entity_val=400, entity_test=400,
                                      query_train=400, query_val=200, query_test=200))
  c.min_image_size = 64
  c.max_image_size = 96
  c.jpeg_quality = 90
  c.contact_sheet = True
  return c


def image_relpath(image_id: str) -> str:
  """OVEN's image layout: images/{first two digits of the number}/{image_id}.jpg."""
  return os.path.join("images", image_id.split("_")[-1][:2], image_id + ".jpg")


def _caption(entity: Entity, kind: str, rng: np.random.Generator, pool: Sequence[Entity],
             concepts: Sequence[Entity], generics: dict, place_rate: float
             ) -> tuple[str, str | None]:
  """A web caption of the given noise kind → (text, id of the entity it mentions)."""
  if kind == "irrelevant":
    if rng.random() < 0.3:
      return str(rng.choice(GENERIC_CAPTIONS)), None
    concept = concepts[int(rng.integers(len(concepts)))]
    name = concept.title if rng.random() < 0.5 else concept.title.lower()
    return str(rng.choice(IRRELEVANT_TEMPLATES)).format(c=name), concept.entity_id
  if kind == "generic":
    g = generics[entity.shape]
    return str(rng.choice(GENERIC_TEMPLATES)).format(g=g.mention.lower()), g.entity_id
  mentioned = entity
  if kind == "similar_wrong":
    options = similar_entities(entity, pool)
    near = options[:3]
    if not options:  # No look-alike: any other entity of the category.
      options = [e for e in pool if e.category == entity.category and e != entity]
    mentioned = (near[int(rng.integers(len(near)))] if near and rng.random() < 0.7
                 else options[int(rng.integers(len(options)))])
  name = mentioned.mention.lower() if rng.random() < 0.3 else mentioned.mention
  if entity.place and rng.random() < place_rate:  # Where the photo was taken: the truth's.
    return str(rng.choice(PLACE_TEMPLATES)).format(n=name, p=entity.place), mentioned.entity_id
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
  if config.names not in ("proper", "descriptive"):
    raise ConfigError(f"world.names must be 'proper' or 'descriptive', got {config.names!r}")
  for key in ("lookalike_fraction", "lookalike_detail", "place_in_caption"):
    if not 0 <= config[key] <= 1:
      raise ConfigError(f"world.{key} must be in [0, 1], got {config[key]}")
  if config.zipf_exponent < 0:
    raise ConfigError(f"world.zipf_exponent must be >= 0, got {config.zipf_exponent}")
  if rates["generic"] > 0 and not config.generic_concepts:
    raise ConfigError("world.caption_rates.generic > 0 needs world.generic_concepts=True: "
                      "generic captions name the generic entities")
  if not 16 <= config.min_image_size <= config.max_image_size:
    raise ConfigError("world needs 16 <= min_image_size <= max_image_size")


def generate(config, out_dir: str) -> dict:
  """Writes the world into `out_dir` (created) and returns its summary (also world.json)."""
  _validate(config)
  start = time.time()
  entities = make_entities(config)
  visual = [e for e in entities if e.specific]
  seen = [e for e in visual if e.seen]
  on_web = [e for e in visual if e.on_web]
  generics = {e.shape: e for e in entities if e.generic}
  concepts = [e for e in entities if e.category == "concept"]
  for sub in ("kb", "web", "oven", "truth", "images"):
    os.makedirs(os.path.join(out_dir, sub), exist_ok=True)

  # ---- Knowledge base (gzip without a timestamp so the bytes depend on the seed only).
  kb_rng = np.random.default_rng([config.seed, 4])
  with open(workdir_lib.world_kb_file(out_dir), "wb") as raw:
    with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
      for e in entities:
        line = kb_line(e, kb_rng, config.num_web_images)
        gz.write((json.dumps(line, ensure_ascii=False) + "\n").encode())
  _write_jsonl(os.path.join(out_dir, "kb", "Wiki6M_ver_1_0_title_only.jsonl"),
               ({"wikidata_id": e.entity_id, "wikipedia_title": e.title} for e in entities))
  _write_jsonl(os.path.join(out_dir, "truth", "entities.jsonl"),
               (dataclasses.asdict(e) for e in entities))

  # ---- Web image–caption pairs; truth goes to a separate file.
  kinds = list(CAPTION_KINDS)
  probs = np.array([config.caption_rates[k] for k in kinds])
  web_p = np.array([e.web_weight for e in on_web])
  web_p /= web_p.sum()
  web_rows, truth_rows = [], []
  for i in range(config.num_web_images):
    rng = np.random.default_rng([config.seed, _STREAM["web"], i])
    entity = on_web[int(rng.choice(len(on_web), p=web_p))]
    kind = kinds[int(rng.choice(len(kinds), p=probs))]
    caption, mentioned = _caption(entity, kind, rng, on_web, concepts, generics,
                                  config.place_in_caption)
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
                   "concepts": len(concepts), "generic": len(generics),
                   "lookalike_pairs": sum(bool(e.lookalike_of) for e in visual) // 2,
                   "per_category": dict(collections.Counter(e.category for e in visual))},
      "web_images": config.num_web_images,
      "web_images_per_entity": _frequency_summary(truth_rows, on_web),
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


def _frequency_summary(truth_rows, on_web) -> dict:
  counts = collections.Counter(r["entity_id"] for r in truth_rows)
  n = np.array(sorted((counts[e.entity_id] for e in on_web), reverse=True))
  return {"max": int(n[0]), "median": float(np.median(n)), "min": int(n[-1]),
          "under_10": int((n < 10).sum())} if len(n) else {}


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
  colours = {"correct": (20, 120, 40), "similar_wrong": (190, 90, 0), "irrelevant": (170, 20, 20),
             "generic": (120, 60, 160)}
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
      f"absent from the web data too; {e.get('lookalike_pairs', 0)} look-alike pairs) + "
      f"{e.get('generic', 0)} generic + {e['concepts']} concepts; "
      f"per category {e['per_category']}",
      f"web images: {summary['web_images']} (per entity: " +
      ", ".join(f"{k} {v:g}" for k, v in summary.get("web_images_per_entity", {}).items()) +
      "); caption noise (configured → realised): " +
      ", ".join(f"{k} {rates['configured'][k]:.2f}→{rates['realised'][k]:.3f}"
                for k in CAPTION_KINDS),
      "OVEN examples: " + ", ".join(f"{k} {v}" for k, v in summary["oven_examples"].items()),
  ]
  return "\n".join(lines)
