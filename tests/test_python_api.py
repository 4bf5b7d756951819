"""docs/python_api.md runs as written, on a small demo workdir; a run loaded from Python
predicts what `eval` predicts, bit for bit; `eval --workdir` needs no config file."""

import json
import os
import re
import shutil

import numpy as np
import pytest

import rew_jax
from rew_jax import __main__ as cli
from rew_jax import kb
from rew_jax import workdir as workdir_lib
from rew_jax.data import oven_files
from rew_jax.errors import ConfigError

HERE = os.path.dirname(os.path.abspath(__file__))
DOC = os.path.join(os.path.dirname(HERE), "docs", "python_api.md")
STEPS = 4
WORLD = ["--config.world.num_entities=12", "--config.world.num_web_images=40"] + [
    f"--config.world.oven.{split}={n}" for split, n in (
        ("entity_train", 8), ("entity_val", 12), ("entity_test", 4), ("query_train", 4),
        ("query_val", 6), ("query_test", 4))]


def blocks(path=DOC):
  return re.findall(r"```python\n(.*?)```", open(path, encoding="utf-8").read(), re.S)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  """runs/demo: the world, its candidates, simulated-curator REW records and a tiny model
  trained on them with the OVEN evaluator (named as the demo names it), from a config file
  deleted after training."""
  root = tmp_path_factory.mktemp("python_api")
  w = str(root / "runs" / "demo")
  # The curate recipe makes the world and its candidates first (a smaller world here).
  assert cli.main(["curate", "--config", "configs/curate_demo.py:runlocal", "--workdir", w,
                   "--quiet"] + WORLD) == 0
  config = str(root / "my_recipe.py")
  text = open(os.path.join(HERE, "tiny_train_config.py")).read()
  open(config, "w").write(text.replace('evals["oven"]', 'evals["oven_val"]'))
  run_dir = workdir_lib.Workdir(w).train_run("rew")
  spec = f"{config}:data_dir={w}/records,steps={STEPS},every={STEPS},world={w}"
  assert cli.main(["train", "--config", spec, "--workdir", run_dir]) == 0
  os.remove(config)  # What the run was trained with is in its checkpoint.
  return {"root": str(root), "w": w, "run_dir": run_dir, "spec": spec}


@pytest.fixture(scope="module")
def cli_eval(demo):
  """`eval --workdir` alone: the saved config; its files moved aside for comparison."""
  code = cli.main(["eval", "--workdir", demo["run_dir"]])
  assert code == 0
  out = os.path.join(demo["run_dir"], "eval_cli")
  shutil.move(os.path.join(demo["run_dir"], "eval"), out)
  return os.path.join(out, "oven_val", f"step_{STEPS}")


def test_eval_needs_no_config_file_and_load_run_predicts_what_eval_predicts(demo, cli_eval):
  run = rew_jax.load_run(demo["run_dir"])
  assert run.step == STEPS and "oven_val" in run.pp and run.config.total_steps == STEPS
  wd = workdir_lib.Workdir(demo["w"])
  index = kb.EntityKB(wd.kb_index)
  refs = [json.loads(line) for line in open(wd.world_oven("entity_val"))]
  examples = [{"image": open(oven_files.image_path(wd.world_images, r["image_id"]), "rb").read(),
               "prompt": r["question"]} for r in refs]
  rows = np.concatenate([run.predict("decode_rows", run.batch(examples[i:i + 8],
                                                              run.pp["oven_val"]))["rows"]
                         for i in range(0, len(examples), 8)])
  mine = {r["data_id"]: index.ids[int(row[0])] for r, row in zip(refs, rows)}
  written = {p["data_id"]: p["pred_entity_id"] for p in map(
      json.loads, open(os.path.join(cli_eval, "predictions_entity.jsonl")))}
  assert mine == written and len(mine) == len(refs)
  # run.evaluate() writes the same files as the command line, byte for byte.
  metrics = run.evaluate()
  step_dir = os.path.join(demo["run_dir"], "eval", "oven_val", f"step_{STEPS}")
  for name in sorted(os.listdir(cli_eval)):
    assert open(os.path.join(step_dir, name)).read() == open(os.path.join(cli_eval, name)).read()
  scored = json.load(open(os.path.join(step_dir, "metrics.json")))
  assert metrics["oven_val/final_score"] == scored["final_score"]
  assert metrics["oven_val/entity_score"] == scored["entity_score"]


def test_another_model_section_is_refused_naming_the_keys(demo):
  config = rew_jax.load_run(demo["run_dir"]).config
  config.model.decoder.num_layers = 2
  with pytest.raises(ConfigError, match="another model section.*model.decoder.num_layers"):
    rew_jax.load_run(demo["run_dir"], config=config)
  config.model.decoder.num_layers = 1
  config.evals.oven_val.batch_size = 4  # Other evaluator options are the caller's to set.
  assert rew_jax.load_run(demo["run_dir"], config=config).config.evals.oven_val.batch_size == 4


def test_every_block_of_the_python_api_page_runs(demo, cli_eval, monkeypatch, capsys):
  del cli_eval  # Runs after it: the page's own run.evaluate() rewrites eval/.
  code = blocks()
  assert len(code) >= 6
  monkeypatch.chdir(demo["root"])
  namespace = {}
  for i, block in enumerate(code):
    try:
      exec(compile(block, f"{DOC}:block{i}", "exec"), namespace)  # pylint: disable=exec-used
    except Exception as e:
      raise AssertionError(f"block {i} of docs/python_api.md failed:\n{block}") from e
  printed = capsys.readouterr().out
  assert "→" in printed and "final_score" in printed
  assert namespace["found"][0][0] == 3  # A title retrieves itself.
