"""Shared pieces of the curation tests: a tiny world with BM25 candidates, curate configs."""

import json
import os
import re
import zlib

from rew_jax import config as config_lib
from rew_jax.curation import section
from rew_jax.data import synthetic
from rew_jax.kb import candidates

NUM_IMAGES = 48
PER_SHARD = 20


def world_config(**overrides):
  c = synthetic.default_config()
  c.num_entities = 40
  c.num_web_images = NUM_IMAGES
  c.contact_sheet = False
  c.oven = config_lib.ConfigDict(dict(entity_train=1, entity_val=2, entity_test=2,
                                      query_train=1, query_val=2, query_test=2))
  c.update(overrides)
  return c


def curate_config(backend="simulated", **curation):
  """A full curate config for the fixture world (no `world` section: it exists)."""
  config = config_lib.ConfigDict()
  config.curation = section.default_config("simulated")
  config.curation.backend = backend
  config.curation.backoff_initial_s = 0.001
  config.curation.backoff_max_s = 0.01
  config.curation.concurrency = 4
  config.curation.simulated.update(dict(malformed=0.1, refusal=0.05))
  for k, v in curation.items():
    config.curation[k] = v
  return config


def build_world(root, config=None, per_shard=PER_SHARD):
  """W/world, W/kb and W/candidates (3 shards by default) under `root`; returns root."""
  synthetic.generate(config or world_config(), os.path.join(root, "world"))
  cc = candidates.default_config()
  cc.retrieval.method = "bm25"
  cc.retrieval.k = 5
  cc.data.records_per_shard = per_shard
  cc.artifacts.codes = False
  candidates.run_candidates(cc, root, log=lambda *_: None)
  return root


def link_inputs(world_root, workdir):
  """A fresh workdir whose world, KB index and candidates are the fixture's."""
  os.makedirs(workdir, exist_ok=True)
  for name in ("world", "kb", "candidates"):
    os.symlink(os.path.join(world_root, name), os.path.join(workdir, name))
  return str(workdir)


def nth_candidate(text, n):
  m = re.search(rf'^{n}\. ("(?:[^"\\]|\\.)*")', text, re.MULTILINE)
  return json.loads(m.group(1)) if m else None


def scripted_reply(text) -> tuple[str, bool]:
  """The batch tests' LLM, deterministic per prompt text: mostly the first candidate, some
  the second, some replies cut off (parse failures, re-asked), "none" without candidates;
  → (reply text, whether it is complete)."""
  name = nth_candidate(text, 1) or "none"
  h = zlib.crc32(name.encode()) % 5
  if h == 0:
    return '{"entity_name": "' + name[:3], False
  if h == 1:
    name = nth_candidate(text, 2) or name
  return json.dumps({"entity_name": name, "justification": "j", "rationale": f"r {name}",
                     "qa": [{"question": "q", "answer": "a"}]}), True
