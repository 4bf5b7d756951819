"""The embedded default world: determinism, noise rates, formats, the unseen split."""

import collections
import gzip
import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from rew_jax.data import synthetic
from rew_jax.data import synthetic_images as si
from rew_jax.errors import ConfigError


def _small(seed=0, **kw):
  c = synthetic.default_config()
  c.seed = seed
  c.num_entities = 40
  c.num_web_images = 120
  c.oven = synthetic.config_lib.ConfigDict(dict(entity_train=10, entity_val=12, entity_test=12,
                                                query_train=6, query_val=6, query_test=6))
  for k, v in kw.items():
    c[k] = v
  return c


def _digest(root):
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """A mid-size world shared by the read-only tests (about 3 s to generate)."""
  config = synthetic.default_config()
  config.num_web_images = 1500
  config.contact_sheet = False
  root = str(tmp_path_factory.mktemp("world"))
  summary = synthetic.generate(config, root)
  return root, config, summary


def test_same_seed_byte_identical_different_seed_differs(tmp_path):
  a, b, c = (str(tmp_path / n) for n in "abc")
  synthetic.generate(_small(0), a)
  synthetic.generate(_small(0), b)
  synthetic.generate(_small(1), c)
  da, db, dc = _digest(a), _digest(b), _digest(c)
  assert da == db
  assert "contact_sheet.png" in da and "kb/Wiki6M_ver_1_0.jsonl.gz" in da
  changed = [k for k in da if da[k] != dc.get(k)]
  assert "kb/Wiki6M_ver_1_0.jsonl.gz" in changed
  assert "web/captions.jsonl" in changed
  assert len(changed) > len(da) // 2


def test_caption_noise_rates_match_config(world):
  root, config, summary = world
  truth = list(synthetic.read_jsonl(os.path.join(root, "truth", "web_truth.jsonl")))
  assert len(truth) == 1500
  counts = collections.Counter(t["caption_kind"] for t in truth)
  for kind, rate in config.caption_rates.items():
    # Binomial standard deviation at n=1500 is <= 0.013; allow 3.5 sigma.
    assert abs(counts[kind] / len(truth) - rate) < 0.045, (kind, counts)
    assert summary["caption_rates"]["realised"][kind] == counts[kind] / len(truth)


def test_captions_are_consistent_with_their_noise_kind(world):
  root, _, _ = world
  entities = {e.entity_id: e for e in synthetic.load_entities(root)}
  captions = {r["image_id"]: r["caption"]
              for r in synthetic.read_jsonl(os.path.join(root, "web", "captions.jsonl"))}
  for t in synthetic.read_jsonl(os.path.join(root, "truth", "web_truth.jsonl")):
    caption = captions[t["image_id"]].lower()
    truth = entities[t["entity_id"]]
    assert "(" not in caption  # Disambiguation never appears in web text.
    if truth.place.lower() in caption:  # Where the photo was taken: the truth's place.
      assert t["caption_kind"] in ("correct", "similar_wrong")
    if t["caption_kind"] == "correct":
      assert t["mentioned_entity_id"] == t["entity_id"]
      assert truth.mention.lower() in caption
    elif t["caption_kind"] == "similar_wrong":
      wrong = entities[t["mentioned_entity_id"]]
      assert wrong.entity_id != truth.entity_id and wrong.category == truth.category
      assert wrong.mention.lower() in caption
      assert wrong.on_web
    elif t["caption_kind"] == "generic":
      kind = entities[t["mentioned_entity_id"]]
      assert kind.generic and kind.shape == truth.shape
      assert kind.mention.lower() in caption and truth.mention.lower() not in caption
    else:
      mentioned = t["mentioned_entity_id"]
      assert mentioned is None or entities[mentioned].category == "concept"


def test_similar_wrong_mentions_differ_in_one_attribute_mostly(world):
  root, _, _ = world
  entities = {e.entity_id: e for e in synthetic.load_entities(root)}
  diffs = []
  for t in synthetic.read_jsonl(os.path.join(root, "truth", "web_truth.jsonl")):
    if t["caption_kind"] == "similar_wrong":
      a, b = entities[t["entity_id"]], entities[t["mentioned_entity_id"]]
      diffs.append(sum(x != y for x, y in zip(a.look, b.look)))
  assert diffs and np.mean(np.array(diffs) == 1) > 0.9


def test_unseen_entities_are_on_the_web_but_not_in_oven_train(world):
  """OVEN's meaning: an unseen entity is absent from OVEN train, while web data shows it."""
  root, _, summary = world
  entities = synthetic.load_entities(root)
  unseen = {e.entity_id for e in entities if not e.seen}
  assert len(unseen) == summary["entities"]["unseen"] == 60
  assert summary["entities"]["zero_shot"] == 0
  assert all(e.web_weight > 0 for e in entities if e.specific)
  on_web = {t["entity_id"] for t in synthetic.read_jsonl(
      os.path.join(root, "truth", "web_truth.jsonl"))}
  # 1500 images over 300 entities under the power law: the rare ones may show no image.
  assert len(unseen & on_web) > 0.6 * len(unseen)
  for kind in ("entity", "query"):
    for row in synthetic.read_jsonl(os.path.join(root, "oven", f"oven_{kind}_train.jsonl")):
      assert row["entity_id"] not in unseen
    val = list(synthetic.read_jsonl(os.path.join(root, "oven", f"oven_{kind}_val.jsonl")))
    for row in val:
      assert (row["entity_id"] in unseen) == row["data_split"].endswith("_unseen")
    assert {r["data_split"] for r in val} == {f"{kind}_val_seen", f"{kind}_val_unseen"}


def test_zero_shot_entities_are_seen_nowhere(tmp_path):
  config = synthetic.default_config()
  config.update(dict(num_entities=60, num_web_images=300, unseen_fraction=0.3,
                     zero_shot_fraction=0.1, contact_sheet=False))
  config.oven.update(dict(entity_train=20, entity_val=20, entity_test=2, query_train=2,
                          query_val=2, query_test=2))
  summary = synthetic.generate(config, str(tmp_path))
  assert summary["entities"]["zero_shot"] == 6 and summary["entities"]["unseen"] == 18
  entities = synthetic.load_entities(str(tmp_path))
  nowhere = {e.entity_id for e in entities if not e.on_web}
  assert nowhere <= {e.entity_id for e in entities if not e.seen}
  nowhere_mentions = {e.mention.lower() for e in entities if not e.on_web}
  web_mentions = {e.mention.lower() for e in entities if e.on_web}
  for t in synthetic.read_jsonl(os.path.join(tmp_path, "truth", "web_truth.jsonl")):
    assert t["entity_id"] not in nowhere and t["mentioned_entity_id"] not in nowhere
  for row in synthetic.read_jsonl(os.path.join(tmp_path, "web", "captions.jsonl")):
    low = row["caption"].lower()
    assert not any(m in low and m not in web_mentions for m in nowhere_mentions), row
  config.zero_shot_fraction = 0.5
  with pytest.raises(synthetic.ConfigError, match="zero_shot_fraction"):
    synthetic.generate(config, str(tmp_path / "bad"))

def test_files_are_plain_json_in_official_formats(world):
  root, _, summary = world
  with gzip.open(os.path.join(root, "kb", "Wiki6M_ver_1_0.jsonl.gz"), "rt") as f:
    kb = [json.loads(line) for line in f]
  assert len(kb) == 300 + 14 + 20  # Specific entities, one generic per kind word, concepts.
  assert set(kb[0]) == {"wikidata_id", "wikipedia_title", "wikipedia_summary",
                        "wikipedia_content"}
  assert len({r["wikidata_id"] for r in kb}) == len(kb)
  assert len({r["wikipedia_title"] for r in kb}) == len(kb)
  assert {"Falcon (bird)", "Falcon (aircraft)", "Tower"} <= {r["wikipedia_title"] for r in kb}
  assert "Negative equity" in {r["wikipedia_title"] for r in kb}
  with open(os.path.join(root, "kb", "Wiki6M_ver_1_0_title_only.jsonl")) as f:
    titles = [json.loads(line) for line in f]
  assert [t["wikipedia_title"] for t in titles] == [r["wikipedia_title"] for r in kb]
  titles_by_id = {r["wikidata_id"]: r["wikipedia_title"] for r in kb}
  oven_fields = {"data_id", "image_id", "question", "entity_id", "entity_text", "data_split"}
  for name in os.listdir(os.path.join(root, "oven")):
    with open(os.path.join(root, "oven", name)) as f:
      rows = [json.loads(line) for line in f]
    for row in rows:
      assert set(row) == oven_fields
      assert titles_by_id[row["entity_id"]] == row["entity_text"]
      assert os.path.exists(os.path.join(root, synthetic.image_relpath(row["image_id"])))
    assert len({r["data_id"] for r in rows}) == len(rows)
  with open(os.path.join(root, "world.json")) as f:
    assert json.load(f)["oven_examples"] == summary["oven_examples"]


def test_images_are_jpeg_in_size_range_and_oven_layout(world):
  root, config, _ = world
  rows = list(synthetic.read_jsonl(os.path.join(root, "web", "captions.jsonl")))[:50]
  for row in rows:
    assert row["image_path"] == f"images/{row['image_id'].split('_')[-1][:2]}/{row['image_id']}.jpg"
    with Image.open(os.path.join(root, row["image_path"])) as img:
      assert img.format == "JPEG"
      assert config.min_image_size <= img.width <= config.max_image_size
      assert config.min_image_size <= img.height <= config.max_image_size


def test_object_colour_is_recoverable_from_pixels():
  """A plain object's pixels vote for its own named colour under jitter and noise."""
  rng = np.random.default_rng(0)
  names = list(si.COLOURS)
  table = np.array([si.COLOURS[n] for n in names], np.float32)
  hits = 0
  for i in range(60):
    colour = names[i % len(names)]
    pixels = si.draw([si.Look("tower", colour, "plain")], rng).astype(np.float32)
    dist = np.linalg.norm(pixels[..., None, :] - table, axis=-1)
    nearest = dist.argmin(-1)[dist.min(-1) < 40]  # Pixels close to some named colour.
    hits += names[int(np.bincount(nearest, minlength=len(names)).argmax())] == colour
  assert hits >= 55


def test_bad_config_is_a_clear_error(tmp_path):
  with pytest.raises(ConfigError, match="sum to 1"):
    synthetic.generate(_small(caption_rates=synthetic.config_lib.ConfigDict(
        dict(correct=0.5, similar_wrong=0.1, irrelevant=0.1, generic=0.1))), str(tmp_path))
  with pytest.raises(ConfigError, match="generic_concepts"):
    synthetic.generate(_small(generic_concepts=False), str(tmp_path))
  with pytest.raises(ConfigError, match="world.names"):
    synthetic.generate(_small(names="latin"), str(tmp_path))
  with pytest.raises(ConfigError, match="num_entities"):
    synthetic.generate(_small(num_entities=10_000), str(tmp_path))


# ------------------------------------------------------------------------- world v2's knobs


def test_proper_names_do_not_describe_the_look_only_the_summary_does(world):
  root, _, _ = world
  entities = [e for e in synthetic.load_entities(root) if e.specific]
  look_words = set(si.COLOURS) | {a.lower() for a in synthetic.ADJ.values()}
  for e in entities:
    words = set(e.title.lower().split())
    assert not words & look_words, e.title
    summary = synthetic.summary(e)
    assert e.colour in summary and e.place in summary
  assert len({e.title.split()[0] for e in entities}) == len(entities)  # Proper names differ.


def test_lookalike_pairs_share_shape_and_colour_and_differ_in_place(world):
  root, config, summary = world
  entities = {e.entity_id: e for e in synthetic.load_entities(root)}
  pairs = {frozenset((e.entity_id, e.lookalike_of)) for e in entities.values() if e.lookalike_of}
  assert len(pairs) == summary["entities"]["lookalike_pairs"] == int(
      config.lookalike_fraction * config.num_entities) // 2
  same_look = 0
  for pair in pairs:
    a, b = (entities[i] for i in pair)
    assert a.lookalike_of == b.entity_id and b.lookalike_of == a.entity_id
    assert (a.category, a.shape) == (b.category, b.shape) and a.place != b.place
    diffs = [(x, y) for x, y in zip(a.look, b.look) if x != y]
    same_look += not diffs
    assert len(diffs) <= 1
    if diffs:  # A detail the pixels show weakly: a near colour or pattern.
      assert frozenset(diffs[0]) in {frozenset(p)
                                     for p in si.SIMILAR_COLOURS + si.SIMILAR_PATTERNS}
  assert 0 < same_look < len(pairs)


def test_web_frequency_follows_the_power_law_and_unseen_entities_are_rarer(world):
  root, _, summary = world
  entities = {e.entity_id: e for e in synthetic.load_entities(root)}
  counts = collections.Counter(t["entity_id"] for t in synthetic.read_jsonl(
      os.path.join(root, "truth", "web_truth.jsonl")))
  n = np.array(sorted(counts.values(), reverse=True))
  # Zipf (s = 1) over 300 entities: the first holds ~1/H(300) ≈ 16 % of the images.
  assert 0.11 < n[0] / n.sum() < 0.21 and summary["web_images_per_entity"]["max"] == n[0]
  seen = [counts[i] for i, e in entities.items() if e.specific and e.seen]
  unseen = [counts[i] for i, e in entities.items() if e.specific and not e.seen]
  assert np.median(unseen) < 0.75 * np.median(seen)
  # The KB's popularity figure follows the web frequency (a public, noisy signal).
  with gzip.open(os.path.join(root, "kb", "Wiki6M_ver_1_0.jsonl.gz"), "rt") as f:
    photos = {r["wikidata_id"]: int(r["wikipedia_content"].split(" holds ")[1].split()[0])
              for r in map(json.loads, f) if " holds " in r["wikipedia_content"]}
  ids = sorted(photos)
  rho = np.corrcoef(np.log([photos[i] for i in ids]),
                    np.log([entities[i].web_weight for i in ids]))[0, 1]
  assert rho > 0.9


def test_the_v1_world_is_a_setting_of_the_knobs(tmp_path):
  config = _small(names="descriptive", lookalike_fraction=0.0, generic_concepts=False,
                  zipf_exponent=0.0, place_in_caption=0.0)
  config.caption_rates = synthetic.config_lib.ConfigDict(
      dict(correct=0.55, similar_wrong=0.25, irrelevant=0.2, generic=0.0))
  synthetic.generate(config, str(tmp_path))
  entities = synthetic.load_entities(str(tmp_path))
  assert not any(e.generic or e.place or e.lookalike_of for e in entities)
  for e in entities:
    if e.specific:
      assert e.title.split(" (")[0] == (f"{e.colour.capitalize()} {synthetic.ADJ[e.pattern]} "
                                        f"{e.title.split()[2]}")
  assert len({e.web_weight for e in entities if e.specific}) == 1
