"""Grain pipelines: batches, exact resume, per-process slicing, the eval input (any source,
hosts, padding, prefetch, workers), skips, global arrays."""

import io
import json
import threading
import time

import numpy as np
import pytest
from PIL import Image

from rew_jax import records
from rew_jax.data import ops, pipeline
from rew_jax.errors import ConfigError
from rew_jax.records import RewRecord

N = 40
# Images are flat colours: pixel value = 5 * record index identifies the record in a batch.
PP = ("decode|resize(2)|tokenize(key='prompt', bos=True)|pad(8, key='prompt')|"
      "tokenize(key='target', eos=True)|pad(6, key='target')")


def png(value: int) -> bytes:
  buf = io.BytesIO()
  Image.new("RGB", (6, 4), (value, value, value)).save(buf, format="PNG")
  return buf.getvalue()


def rec(i, **kw):
  fields = dict(image_id=f"web_{i:03d}", image=png(5 * i), caption=f"caption {i}",
                entity_id=f"Q{i}", entity_name=f"entity {i}", curation_status="kept",
                rationale="", qa=(), split="entity_val_seen")
  fields.update(kw)
  return RewRecord(**fields)


@pytest.fixture(scope="module")
def data_dir(module_workdir):
  path = str(module_workdir / "records")
  records.write_records(path, [rec(i) for i in range(N)], records_per_shard=15)
  return path


def ids(batch):
  """Record index of each example of a batch (from its flat colour)."""
  return [int(v) // 5 for v in batch["image"][:, 0, 0, 0]]


def train(data_dir, **kw):
  kw.setdefault("batch_size", 4)
  kw.setdefault("pp", PP)
  kw.setdefault("num_threads", 2)
  return pipeline.train_dataset(data_dir, process_index=kw.pop("p", 0),
                                process_count=kw.pop("n", 1), **kw)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_train_batch_contents(data_dir):
  batch = next(iter(train(data_dir)))
  assert set(batch) == {"image", "prompt", "target", "task_id", "mask", "skipped",
                        "prompt_truncated", "target_truncated"}
  assert not batch["target_truncated"].any() and batch["target_truncated"].dtype == np.int32
  assert batch["image"].shape == (4, 2, 2, 3) and batch["image"].dtype == np.uint8
  assert batch["prompt"].shape == (4, 8) and batch["prompt"].dtype == np.int32
  assert (batch["prompt"][:, 0] == 101).all() and (batch["mask"] == 1).all()
  assert not batch["skipped"].any() and (batch["task_id"] == 0).all()
  # Target = "entity {i}" + [SEP], i read back from the pixels.
  from rew_jax.data.tokenizers import load_tokenizer
  tok = load_tokenizer("bert")
  for i, target in zip(ids(batch), batch["target"]):
    assert tok.decode(target) == f"entity {i}"
    assert 102 in target


def test_epochs_are_permutations_and_deterministic(data_dir):
  batches = take(iter(train(data_dir, num_epochs=2)), 2 * N // 4)
  seen = [i for b in batches for i in ids(b)]
  first, second = seen[:N], seen[N:]
  assert sorted(first) == sorted(second) == list(range(N))
  assert first != second and first != list(range(N))  # Shuffled, re-drawn per epoch.
  with pytest.raises(StopIteration):
    it = iter(train(data_dir, num_epochs=1))
    take(it, N // 4 + 1)
  assert_same(take(iter(train(data_dir)), 3), batches[:3])
  other_seed = take(iter(train(data_dir, seed=5)), 3)
  assert [ids(b) for b in other_seed] != [ids(b) for b in batches[:3]]


def test_exact_resume(data_dir):
  pp = "decode|inception_crop(2)|" + PP.split("|", 2)[2]  # Random crops too.
  it = iter(train(data_dir, pp=pp))
  take(it, 7)  # Crosses the epoch boundary (10 batches per epoch) on the next ones.
  state = it.get_state()
  json.dumps(state)  # Checkpointable as JSON (orbax stores it so).
  expected = take(it, 5)
  again = iter(train(data_dir, pp=pp))
  again.set_state(state)
  assert_same(take(again, 5), expected)


def test_per_process_slicing(data_dir):
  hosts = [take(iter(train(data_dir, batch_size=4, num_epochs=1, p=p, n=2)), N // 4)
           for p in range(2)]
  per_host = [[i for b in batches for i in ids(b)] for batches in hosts]
  assert all(len(h) == N // 2 for h in per_host)
  assert not set(per_host[0]) & set(per_host[1])
  assert sorted(per_host[0] + per_host[1]) == list(range(N))
  assert hosts[0][0]["image"].shape[0] == 2  # Local batch = global / processes.
  with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
    train(data_dir, batch_size=4, p=0, n=3)


def test_hosts_split_the_one_host_global_batch(data_dir):
  # Random crops included: augmentations are keyed by global position, so the two hosts'
  # rows, stacked, are the one-host batch itself (and a multi-host run its losses).
  pp = "decode|inception_crop(2)|" + PP.split("|", 2)[2]
  one = take(iter(train(data_dir, pp=pp)), 12)
  two = [take(iter(train(data_dir, pp=pp, p=p, n=2)), 12) for p in range(2)]
  stacked = [{k: np.concatenate([a[k], b[k]]) for k in a} for a, b in zip(*two)]
  assert_same(stacked, one)


EVAL_PP = "decode|resize(2)|tokenize(key='prompt', bos=True)|pad(8, key='prompt')"


def _examples(n):
  """An in-memory source: example i is a flat image of grey 5i and a question."""
  return [{"image": png(5 * i), "prompt": f"question {i}", "image_id": f"img_{i}"}
          for i in range(n)]


def _eval(source, **kw):
  kw.setdefault("batch_size", 4)
  kw.setdefault("num_threads", 2)
  return pipeline.eval_input(source, kw.pop("pp", EVAL_PP), **kw)


def test_eval_input_hosts_share_any_source_in_fixed_batches():
  assert pipeline.eval_num_batches(11, 4, 2) == 3
  seen, pads = [], 0
  for p in range(2):
    ds, num_batches = _eval(_examples(11), process_index=p, process_count=2)
    batches = list(ds)
    assert num_batches == len(batches) == 3  # ceil(ceil(11 / 2) / 2), on both hosts.
    for b in batches:
      assert b["image"].shape == (2, 2, 2, 3) and b["prompt"].shape == (2, 8)
      assert set(b) == {"image", "prompt", "prompt_truncated", "mask", pipeline.INDEX_KEY}
      index, mask = b[pipeline.INDEX_KEY], b["mask"]
      np.testing.assert_array_equal(mask, index >= 0)
      seen += index[index >= 0].tolist()
      np.testing.assert_array_equal(ids(b)[:int(mask.sum())], index[index >= 0])
      pads += int((index < 0).sum())
    # Host p reads p, p+2, ...; its padding repeats its first example.
    flat = np.concatenate([b[pipeline.INDEX_KEY] for b in batches])
    assert flat.tolist() == [i for i in range(p, 11, 2)] + [-1] * (6 - len(range(p, 11, 2)))
    if flat[-1] < 0:
      assert ids(batches[-1])[-1] == p  # Padding repeats the host's first example.
  assert sorted(seen) == list(range(11)) and pads == 1


def test_eval_input_example_fn_runs_ahead_in_threads():
  calls, threads = [], set()

  def example_fn(item, where):
    calls.append(where)
    threads.add(threading.current_thread().name)
    return {"image": item, "prompt": "what is this?"}

  source = [png(5 * i) for i in range(40)]
  ds, num_batches = _eval(source, example_fn=example_fn)
  it = iter(ds)
  first = next(it)
  assert ids(first) == [0, 1, 2, 3] and num_batches == 10
  deadline = time.time() + 10
  while len(calls) < 12 and time.time() < deadline:  # Two batches of examples and more.
    time.sleep(0.01)
  assert len(calls) >= 12, "the input did not read ahead while the consumer was busy"
  assert threading.current_thread().name not in threads
  assert "example 7" in calls
  assert [ids(b) for b in it][-1] == [36, 37, 38, 39]


def test_eval_input_with_workers_equals_threads():
  source = _examples(10)
  with_threads = list(_eval(source)[0])
  with_workers = list(_eval(source, num_workers=1)[0])
  assert len(with_workers) == len(with_threads) == 3
  for a, b in zip(with_threads, with_workers):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_eval_input_refuses_an_empty_source_and_an_undecoded_image():
  with pytest.raises(ValueError, match="at least one example"):
    _eval([])
  with pytest.raises(ConfigError, match="never decodes 'image'"):
    list(_eval(_examples(2), pp="tokenize(key='prompt')")[0])


def test_eval_records_keep_every_example_and_pad(module_workdir):
  path = str(module_workdir / "eval11")
  records.write_records(path, [rec(i, curation_status="unresolved") for i in range(11)],
                        records_per_shard=4)
  seen, masks = [], []
  for p in range(2):
    batches = list(pipeline.eval_dataset(path, batch_size=4, pp=PP, process_index=p,
                                         process_count=2, num_threads=1))
    assert len(batches) == 3 and all(b["image"].shape[0] == 2 for b in batches)
    for b in batches:
      seen += [str(s) for s, m in zip(b["image_id"], b["mask"]) if m]
      masks += b["mask"].tolist()
    assert batches[0]["split"][0] == "entity_val_seen"
  assert sorted(seen) == [f"web_{i:03d}" for i in range(11)]  # Unresolved records kept too.
  assert masks.count(0) == 1
  again = list(pipeline.eval_dataset(path, batch_size=4, pp=PP, process_index=1, process_count=2))
  assert [b["image_id"].tolist() for b in again] == [b["image_id"].tolist() for b in batches]


@pytest.fixture(scope="module")
def bad_dir(module_workdir):
  """12 records: #3 has a corrupt JPEG, #7 a mistyped field, #9 is abstained."""
  from array_record.python import array_record_module
  import msgpack
  path = module_workdir / "bad"
  path.mkdir()
  shard = str(path / "rew-00000.array_record")
  writer = array_record_module.ArrayRecordWriter(shard, records.WRITER_OPTIONS)
  for i in range(12):
    if i == 3:
      data = records.encode(rec(i, image=b"\xff\xd8\xff\xe0 not really a jpeg"))
    elif i == 7:
      data = msgpack.packb({"schema_version": 1, "image_id": "web_007", "image": png(35),
                            "caption": ["not", "text"]}, use_bin_type=True)
    else:
      data = records.encode(rec(i, curation_status="abstained" if i == 9 else "kept"))
    writer.write(data)
  writer.close()
  import os
  info = records.ShardInfo("rew-00000.array_record", 12, records._sha256(shard),
                           os.path.getsize(shard), {})
  records.Manifest(shards=(info,)).save(str(path))
  return str(path)


def test_bad_records_raise_naming_shard_and_record(bad_dir):
  with pytest.raises((ops.ImageDecodeError, records.RecordError),
                     match=r"rew-00000.array_record record (3: cannot decode image|7: field 'caption')"):
    list(train(bad_dir, num_epochs=1, num_threads=1))


def test_bad_records_skipped_are_counted(bad_dir):
  report = pipeline.SkipReport()
  seen = []
  for batch in train(bad_dir, num_epochs=1, batch_size=1, on_error="skip", num_threads=1):
    report.update(batch)
    seen += [i for i, m in zip(ids(batch), batch["mask"]) if m]
  # 12 records: 1 abstained (filtered, no task), 2 bad (masked and counted), 9 examples.
  assert report.skipped == 2 and report.examples == 9
  assert sorted(seen) == [0, 1, 2, 4, 5, 6, 8, 10, 11]
  assert "2 bad records skipped" in report.summary()


def test_truncated_targets_are_counted_per_task_length(data_dir):
  """"entity {i}" is 2–3 ids + EOS: an entity length of 2 cuts every target, and the
  report says so; the batch's width stays the pp spec's."""
  report = pipeline.SkipReport()
  tasks_cfg = {"entity": {"target_len": 2}}
  for batch in train(data_dir, num_epochs=1, num_threads=1, tasks=tasks_cfg):
    report.update(batch)
    assert batch["target"].shape[1] > 2 and not batch["target"][:, 2:].any()
  assert report.truncated == report.examples > 0
  assert f"{report.truncated} targets cut" in report.summary()


def test_multiprocess_workers_resume(data_dir):
  it = iter(train(data_dir, num_workers=1))
  first = take(it, 3)
  state = it.get_state()
  expected = take(it, 2)
  assert_same(first + expected, take(iter(train(data_dir)), 5))  # Same stream as in-process.
  again = iter(train(data_dir, num_workers=1))
  again.set_state(state)
  assert_same(take(again, 2), expected)


def test_eval_batch_to_global_arrays_on_8_devices():
  """An eval batch as predict_all places it on several processes: every array over the batch
  axes, `_index` included."""
  import jax
  from jax.sharding import Mesh, PartitionSpec
  from rew_jax import sharding
  assert jax.device_count() == 8
  mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "fsdp"))
  batch = next(iter(_eval(_examples(8), batch_size=8)[0]))
  out = sharding.host_batch_to_global(batch, mesh)
  assert out["image"].shape == (8, 2, 2, 3)
  assert out["image"].sharding.spec == PartitionSpec(("data", "fsdp"))
  assert len(out["image"].addressable_shards) == 8
  assert out["image"].addressable_shards[0].data.shape == (1, 2, 2, 3)
  np.testing.assert_array_equal(np.asarray(out["prompt"]), batch["prompt"])
  np.testing.assert_array_equal(np.asarray(out[pipeline.INDEX_KEY]), np.arange(8))
  # A mesh without an fsdp axis shards over data only.
  mesh2 = Mesh(np.array(jax.devices()).reshape(8, 1), ("data", "tensor"))
  assert sharding.host_batch_to_global(batch, mesh2)["mask"].sharding.spec == PartitionSpec(
      ("data",))


def test_from_config(data_dir):
  cfg = pipeline.default_config()
  cfg.data_dir = data_dir
  cfg.batch_size = 4
  cfg.pp = PP
  batch = next(iter(pipeline.from_config(cfg, process_index=0, process_count=1)))
  assert batch["image"].shape[0] == 4
  with pytest.raises(ConfigError, match="unknown config key input.batchsize; closest valid keys: batch_size"):
    pipeline.from_config({"batchsize": 3})
  with pytest.raises(ConfigError, match="on_error must be"):
    train(data_dir, on_error="ignore")


def test_auto_parallelism_from_core_count():
  auto = pipeline.auto_parallelism
  assert auto(-1, 0, cores=2) == (0, 2)      # Small hosts: a thread per core, no workers.
  assert auto(-1, 0, cores=4) == (0, 4)
  assert auto(-1, 0, cores=16) == (4, 4)     # A worker per 4 cores, 4 threads each.
  assert auto(-1, 0, cores=240) == (60, 4)
  assert auto(2, 0, cores=16) == (2, 4)      # Set workers, threads filled in.
  assert auto(0, 0, cores=16) == (0, 16)
  assert auto(-1, 3, cores=2) == (0, 3)      # Set values are kept.
  assert auto(8, 1, cores=240) == (8, 1)
  defaults = pipeline.default_config()
  assert (defaults.num_workers, defaults.num_threads) == (-1, 0)
