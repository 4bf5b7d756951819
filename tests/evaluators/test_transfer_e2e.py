"""configs/knn_matching.py and configs/zeroshot.py end to end through `python -m rew_jax eval`,
in their runlocal form, on tiny stand-ins: a small embedded world (its KB index, OVEN files
and images), records of its images labelled as a noisy candidate and a curated entity,
random DINOv2 and CLIP folders written by transformers, a GiT checkpoint trained here for
2 steps, mock TFDS sets and on-disk miniatures of FGVC-Aircraft (class folders) and
Sports100 (a CSV)."""

import csv
import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rew_jax import __main__ as cli  # noqa: E402
from rew_jax import records as records_lib  # noqa: E402
from rew_jax import workdir as workdir_lib  # noqa: E402
from rew_jax.data import ops as ops_lib  # noqa: E402
from rew_jax.data import oven_files, synthetic  # noqa: E402
from rew_jax.kb.wiki6m import EntityKB  # noqa: E402

from models.test_feature_parity import _randomise  # noqa: E402  (tests/ is on sys.path)

pytestmark = pytest.mark.slow  # Trains a GiT and compiles three models: about 80 s of CPU.

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
            patch_size=8)



@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """W: world, KB index, records; O: OVEN files; weights; A/S: on-disk sets; T: a GiT run."""
  root = tmp_path_factory.mktemp("transfer")
  w = workdir_lib.Workdir(str(root / "W"))
  config = synthetic.default_config()
  config.update(dict(num_entities=12, num_web_images=4, contact_sheet=False))
  config.oven = dict(entity_train=24, entity_val=6, entity_test=1, query_train=1, query_val=4,
                     query_test=1)
  synthetic.generate(config, w.world)
  kb = EntityKB.build(w.world_kb, w.kb_index, progress=False)
  (root / "O").mkdir()
  for split in ("entity_val", "query_val"):
    os.symlink(w.world_oven(split), root / "O" / f"oven_{split}.jsonl")
  os.symlink(w.world_images, root / "O" / "images")
  # The memory: OVEN train images; the candidate is wrong for every third (a caption
  # retrieval mistake), the curated entity right, one curation abstained.
  refs = oven_files.read_references(w.world_oven("entity_train"))
  ids = list(kb.ids)
  recs = []
  for i, r in enumerate(refs):
    wrong = ids[(ids.index(r["entity_id"]) + 1) % len(ids)]
    candidate = wrong if i % 3 == 0 else r["entity_id"]
    status = "abstained" if i == 5 else ("corrected" if i % 3 == 0 else "kept")
    image = open(oven_files.image_path(w.world_images, r["image_id"]), "rb").read()
    recs.append(records_lib.RewRecord(
        image_id=r["image_id"], image=image, caption="a photo",
        candidates=[{"entity_id": candidate, "name": kb.titles[ids.index(candidate)],
                     "score": 1.0}],
        entity_id=r["entity_id"] if status != "abstained" else "",
        entity_name=r["entity_text"] if status != "abstained" else "",
        curation_status=status, backend="test"))
  records_lib.write_records(w.records(), recs, records_per_shard=12)
  # Frozen feature models, random, of the runlocal shapes.
  torch.manual_seed(0)
  dino = transformers.Dinov2Model(transformers.Dinov2Config(mlp_ratio=2, **TINY)).eval()
  _randomise(dino, 1, scale=0.2)
  dino.save_pretrained(str(root / "dinov2"))
  vision = dict(TINY, intermediate_size=64)
  clip = transformers.CLIPModel(transformers.CLIPConfig(
      vision_config=vision, text_config=dict(vision, vocab_size=64, max_position_embeddings=8),
      projection_dim=16)).eval()
  _randomise(clip, 2, scale=0.2)
  clip.save_pretrained(str(root / "clip"))
  # Aircraft: class folders named as two world entities and one that is not in the KB.
  titles = [kb.titles[ids.index(r["entity_id"])] for r in refs[:2]]
  for title, r in zip(titles + ["Zeppelin NT"], refs[:2] + refs[2:3]):
    folder = root / "A" / "test" / title.replace(" ", "_")
    folder.mkdir(parents=True)
    os.symlink(oven_files.image_path(w.world_images, r["image_id"]), folder / "0.jpg")
  # Sports100: a CSV, one class the resolver maps, one it cannot.
  (root / "S").mkdir()
  with open(root / "S" / "test.csv", "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["image", "label"])
    for r, label in zip(refs[3:6], [titles[0], "air_hockey", "air_hockey"]):
      path = oven_files.image_path(w.world_images, r["image_id"])
      out.writerow([os.path.relpath(path, root / "S"), label])
  # A GiT checkpoint of the runlocal shapes, trained on the records for 2 steps.
  train = str(root / "T")
  assert cli.main(["train", "--config", f"{REPO}/tests/tiny_train_config.py:data_dir="
                   f"{w.records()},steps=2,every=2", "--workdir", train]) == 0
  return dict(root=root, w=w, kb=kb, recs=recs, train=train)


def _embed_torch(model, images, pp):
  """Reference embeddings of encoded images, preprocessed as the evaluator does."""
  op = ops_lib.get_preprocess(pp)
  pixels = np.stack([op({"image": im})["image"] for im in images]).transpose(0, 3, 1, 2)
  with torch.no_grad():
    if isinstance(model, transformers.CLIPModel):
      out = model.get_image_features(pixel_values=torch.tensor(pixels))
      return getattr(out, "pooler_output", out).numpy()
    return model(pixel_values=torch.tensor(pixels)).pooler_output.numpy()


def _knn_reference(queries, memory, labels, k):
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
  keep = [i for i, lab in enumerate(labels) if lab]
  m = memory[keep] / np.linalg.norm(memory[keep], axis=1, keepdims=True)
  out = []
  for row in q.astype(np.float64) @ m.T.astype(np.float64):
    order = np.argsort(-row, kind="stable")[:k]
    votes = {}
    for rank, j in enumerate(order):
      votes.setdefault(labels[keep[j]], [0, rank])[0] += 1
    out.append(max(votes, key=lambda c: (votes[c][0], -votes[c][1])))
  return out


def _eval_knn(setup, arg: str, capsys) -> dict:
  """`eval` of configs/knn_matching.py:ARG in the shared workdir; → the printed figures."""
  assert cli.main(["eval", "--config", f"{REPO}/configs/knn_matching.py:{arg}",
                   "--workdir", setup["w"].root]) == 0
  return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_knn_dinov2_on_oven_matches_a_pytorch_reference(setup, capsys):
  w, root = setup["w"], setup["root"]
  printed = _eval_knn(
      setup, f"features=dinov2,runlocal,dinov2={root / 'dinov2'},oven_dir={root / 'O'}", capsys)
  out = os.path.join(w.root, "eval", "knn", "step_0")
  table = list(csv.DictReader(open(os.path.join(out, "table.tsv")), delimiter="\t"))
  assert len(table) == 8  # runlocal: the first 8 validation queries.
  refs = oven_files.read_references([os.path.join(root, "O", f"oven_{s}_val.jsonl")
                                     for s in ("entity", "query")])[:8]
  assert [t["query_id"] for t in table] == [r["data_id"] for r in refs]
  # The same kNN from transformers' DINOv2 on the same pixels, in numpy.
  hf = transformers.Dinov2Model.from_pretrained(str(root / "dinov2")).eval()
  pp = "decode|resize_crop(32)|normalize('imagenet')"
  recs = setup["recs"]
  memory = _embed_torch(hf, [r.image for r in recs], pp)
  queries = _embed_torch(hf, [open(oven_files.image_path(str(root / "O" / "images"),
                                                         r["image_id"]), "rb").read()
                              for r in refs], pp)
  for labelling, labels in (
      ("candidate", [r.candidates[0].entity_id for r in recs]),
      ("curated", [r.entity_id if r.curation_status in ("kept", "corrected") else ""
                   for r in recs])):
    expected = _knn_reference(queries, memory, labels, k=3)
    assert [t[f"pred_{labelling}"] for t in table] == expected, labelling
    top1 = 100.0 * np.mean([e == r["entity_id"] for e, r in zip(expected, refs)])
    assert printed[f"knn/{labelling}_top1"] == pytest.approx(top1)
  assert printed["knn/curated_labelled"] == len(recs) - 1
  assert printed["knn/gain"] == pytest.approx(printed["knn/curated_top1"] -
                                              printed["knn/candidate_top1"])


def test_knn_clip_rew_labels_on_an_on_disk_set(setup, capsys):
  w, root = setup["w"], setup["root"]
  printed = _eval_knn(setup, f"features=clip,labels=rew,queries=aircraft,runlocal,"
                             f"clip={root / 'clip'},root={root / 'A'}", capsys)
  assert set(printed) == {"knn/curated_top1", "knn/curated_labelled", "knn/unlabelled_queries"}
  assert printed["knn/unlabelled_queries"] == 1  # "Zeppelin NT" is not in the KB.
  maps = open(os.path.join(w.root, "eval", "knn", "class_maps", "aircraft.jsonl")).read()
  rows = [json.loads(line) for line in maps.splitlines()]
  expected = {setup["kb"].titles[setup["kb"].row_of(r.entity_id)]: r.entity_id
              for r in setup["recs"][:2]}
  assert {r["class_name"]: r["entity_id"] for r in rows} == dict(expected, **{"Zeppelin NT": ""})
  assert [r["source"] for r in rows] == ["resolver"] * 3


def test_knn_missing_weights_name_the_folder(setup, capsys):
  assert cli.main(["eval", "--config", f"{REPO}/configs/knn_matching.py:runlocal", "--workdir",
                   setup["w"].root]) != 0
  assert ("weights/dinov2-large: no such folder; expected a local HF DINOv2 folder"
          in capsys.readouterr().err)


def test_zeroshot_all_sets_from_a_trained_checkpoint(setup, capsys):
  root, kb, train = setup["root"], setup["kb"], setup["train"]
  # A person maps two Flowers classes onto world entities before the run.
  maps = os.path.join(train, "eval", "zeroshot", "class_maps")
  os.makedirs(maps)
  with open(os.path.join(maps, "flowers102.jsonl"), "w") as f:
    for name, row in (("pink primrose", 0), ("hard-leaved pocket orchid", 1)):
      f.write(json.dumps({"class_name": name, "entity_id": kb.ids[row],
                          "source": "manual"}) + "\n")
  arg = (f"dataset=all,runlocal,target=name,kb={kb.index_dir},root_aircraft={root / 'A'},"
         f"root_sports100={root / 'S'}")
  with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
    assert cli.main(["eval", "--config", f"{REPO}/configs/zeroshot.py:{arg}",
                     "--workdir", train]) == 0
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  sets = ("flowers102", "sun397", "food101", "aircraft", "sports100")
  assert printed["zeroshot/mean_top1"] == pytest.approx(
      np.mean([printed[f"zeroshot/{s}/top1"] for s in sets]))
  # Two classes mapped by hand; the resolver maps "lotus" onto the KB's generic Lotus.
  assert printed["zeroshot/flowers102/unmapped_classes"] == 99
  assert printed["zeroshot/aircraft/unmapped_classes"] == 1
  assert printed["zeroshot/sports100/unmapped_classes"] == 1
  assert printed["zeroshot/sports100/unmapped_examples"] == 2
  for name in ("aircraft", "sports100", "flowers102"):
    out = os.path.join(train, "eval", "zeroshot", "step_2", name)
    table = list(csv.DictReader(open(os.path.join(out, "table.tsv")), delimiter="\t"))
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    # Decoding is restricted: every answer is one of the set's mapped entities.
    allowed = {r["entity_id"] for r in table} | set(
        json.loads(line)["entity_id"] for line in open(os.path.join(maps, f"{name}.jsonl")))
    assert all(r["pred_entity_id"] in allowed - {""} for r in table), name
    assert printed[f"zeroshot/{name}/top1"] == pytest.approx(
        100.0 * np.mean([int(r["correct"]) for r in table]))
    assert len(metrics["unmapped_classes"]) == printed[f"zeroshot/{name}/unmapped_classes"]
  flowers = [json.loads(line) for line in open(os.path.join(maps, "flowers102.jsonl"))]
  assert len(flowers) == 102 and flowers[0]["source"] == "manual"
  lotus = next(r for r in flowers if r["class_name"] == "lotus")
  assert (lotus["source"], kb.titles[kb.row_of(lotus["entity_id"])]) == ("resolver", "Lotus")


def test_frozen_evaluation_needs_a_loader_in_init_from(tmp_path, capsys):
  assert cli.main(["eval", "--config", f"{REPO}/configs/knn_matching.py:runlocal",
                   "--workdir", str(tmp_path), "--config.train.init_from=none"]) != 0
  assert "total_steps=0 evaluates the weights init_from loads" in capsys.readouterr().err
