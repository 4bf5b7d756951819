"""Every command the docs show still works.

Each config's docstring holds the commands that run it; they run here, in order, in their
`runlocal` form (the config's `runlocal` variant, a temporary directory for `W`, `runs/...`
and `gs://BUCKET/...`, an OVEN folder made from the embedded world); tests/test_gcs.py runs
git_large_rew.py's command again with gs://BUCKET in a local GCS emulator. Commands in docs/*.md and
the README are checked without running: the stage exists, the config file loads and every
`--config.KEY=VALUE` override names a key of that config.
"""

import ast
import glob
import json
import os
import re
import shlex

import pytest

from rew_jax import __main__ as cli
from rew_jax import config as config_lib
from rew_jax.data import oven_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Configs whose commands need what a test cannot start here, and where they are tested.
NOT_RUN = {
    "demo.py": "its command is the README's; tests/test_demo.py runs its runlocal form",
    "curate_gemini.py": "needs Gemini; tests/curation/test_http_backends.py runs the backend "
                        "against a local stub server",
    "curate_openai.py": "needs an OpenAI-compatible server; tested against a local stub",
    "curate_gemma.py": "needs Gemma weights and the gemma extra",
    "knn_matching.py": "needs DINOv2/CLIP folders; tests/evaluators/test_transfer_e2e.py runs "
                       "its runlocal form with random ones",
    "zeroshot.py": "needs a pretraining run and TFDS sets; tests/evaluators/test_transfer_e2e.py "
                   "runs its runlocal form on mock TFDS data and a checkpoint it trains",
}
# The order in which the docstrings run: later ones use what earlier ones made.
ORDER = ("candidates_demo.py", "curate_demo.py", "git_large_rew.py", "oven_finetune.py")


def commands(text: str) -> list[list[str]]:
  """`python -m rew_jax ...` commands in `text`, continuation lines joined, comments cut."""
  text = re.sub(r"\\\n\s*", " ", text)
  out = []
  for line in text.splitlines():
    _, found, rest = line.partition("python -m rew_jax ")
    if found:
      argv = shlex.split(rest, comments=True)
      out.append([a for a in argv if a not in ("...", "[", "]")])
  return out


def docstring(path: str) -> str:
  with open(path, encoding="utf-8") as f:
    return ast.get_docstring(ast.parse(f.read())) or ""


def runlocal(argv: list[str], bucket: str = "") -> list[str]:
  """The command in its runlocal form: the config's runlocal variant, local paths; with
  `bucket`, gs://BUCKET/ becomes gs://bucket/ (a local emulator's, as in tests/test_gcs.py)."""
  out = []
  for i, arg in enumerate(argv):
    if i and argv[i - 1] == "--config":
      path, _, args = arg.partition(":")
      if _accepts_runlocal(path):
        args = ",".join(a for a in (args, "runlocal") if a)
      arg = f"{path}:{args}" if args else path
    out.append(arg.replace("gs://BUCKET/", f"gs://{bucket}/" if bucket else "bucket/"))
  return out


def _accepts_runlocal(path: str) -> bool:
  try:
    config_lib.load_config(os.path.join(REPO, path) + ":runlocal")
    return True
  except config_lib.ConfigError:
    return False


def test_every_config_has_commands_and_a_place_here():
  for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))):
    name = os.path.basename(path)
    assert commands(docstring(path)), f"{name}: its docstring shows no command"
    assert name in ORDER or name in NOT_RUN, f"{name}: add it to ORDER or NOT_RUN"


@pytest.fixture()
def scratch(tmp_path, monkeypatch):
  """A working directory like a user's: configs/ beside it; OVEN/ once a world exists."""
  os.symlink(os.path.join(REPO, "configs"), tmp_path / "configs")
  monkeypatch.chdir(tmp_path)
  return tmp_path


def _link_oven(world: str, root) -> None:
  """OVEN/ in the official layout's place, made of the embedded world's files; its test
  files, as OVEN's, without labels."""
  (root / "OVEN").mkdir()
  for f in glob.glob(os.path.join(world, "oven", "*.jsonl")):
    out = root / "OVEN" / os.path.basename(f)
    if "_test" in os.path.basename(f):
      rows = [json.loads(line) for line in open(f, encoding="utf-8")]
      out.write_text("".join(json.dumps({k: v for k, v in r.items()
                                         if k not in ("entity_id", "entity_text")}) + "\n"
                             for r in rows))
    else:
      os.symlink(f, out)
  os.symlink(os.path.join(world, "images"), root / "OVEN" / "images")


def _with_target(argv: list[str], target: str) -> list[str]:
  """A train/eval command with `target=...` added to its config and its run directories
  renamed, so that the other entity target runs beside the documented one."""
  out = []
  for i, arg in enumerate(argv):
    if i and argv[i - 1] == "--config":
      arg += f",target={target}"
    out.append(re.sub(r"(rew_gitl|W/finetune)\b", rf"\1_{target}", arg))
  return out


@pytest.mark.slow
def test_config_docstring_commands_run_in_runlocal_form(scratch, capsys):
  ran = []
  for name in ORDER:
    if name == "git_large_rew.py":  # Its input: the records the curate command made.
      (scratch / "bucket" / "rew").mkdir(parents=True)
      for part in ("records", "kb"):  # The curated records and the KB build's codes.
        os.symlink(scratch / "runs" / "curate_demo" / part, scratch / "bucket" / "rew" / part)
    if name == "oven_finetune.py":  # W: the curated pipeline's workdir (its KB index).
      _link_oven(str(scratch / "runs" / "curate_demo" / "world"), scratch)
      os.symlink(scratch / "runs" / "curate_demo", scratch / "W")
    for argv in commands(docstring(os.path.join(REPO, "configs", name))):
      argv = runlocal(argv)
      assert cli.main(argv) == 0, (name, argv, capsys.readouterr().err[-2000:])
      ran.append(argv[0])
  assert ran == ["world", "candidates", "curate", "train", "records", "train", "eval"]
  # The documented recipes train on GER-ALD codes; the same commands with target=name.
  for name in ("git_large_rew.py", "oven_finetune.py"):
    for argv in commands(docstring(os.path.join(REPO, "configs", name))):
      if argv[0] in ("train", "eval"):
        argv = _with_target(runlocal(argv), "name")
        assert cli.main(argv) == 0, (name, argv, capsys.readouterr().err[-2000:])
  for run in ("finetune", "finetune_name"):
    out = scratch / "W" / run / "eval"
    assert os.path.isfile(out / "oven_val" / "step_3" / "predictions_entity.jsonl")
    # The test split: predictions for every (unlabeled) reference, in the official format.
    test_refs = oven_files.read_references(
        [str(scratch / "OVEN" / f"oven_{t}_test.jsonl") for t in ("entity", "query")])
    preds = oven_files.read_predictions(
        [str(out / "oven_test" / "step_3" / f"predictions_{t}.jsonl") for t in ("entity",
                                                                                "query")])
    assert sorted(p["data_id"] for p in preds) == sorted(r["data_id"] for r in test_refs)
    metrics = json.load(open(out / "oven_test" / "step_3" / "metrics.json"))
    assert metrics["final_score"] is None and sum(
        c["predictions"] for c in metrics["unlabeled"].values()) == len(test_refs) == 30
    # Training never ran the test split: its only files are the `eval` command's.
    assert os.listdir(out / "oven_test") == ["step_3"]
  for run, target in (("rew_gitl", "ald"), ("rew_gitl_name", "name")):
    step = scratch / "bucket" / run / "checkpoints" / "3"
    saved = json.load(open(step / "config" / "metadata"))  # The config the run trained with.
    assert saved["input"]["tasks"]["entity"]["target"] == target


def markdown_code(text: str) -> str:
  """The code of a markdown page: indented and fenced blocks, and inline code spans."""
  lines, fenced = [], False
  for line in text.splitlines():
    if line.lstrip().startswith("```"):
      fenced = not fenced
    elif fenced or line.startswith("    "):
      lines.append(line)
    else:
      lines += re.findall(r"`([^`]*python -m rew_jax [^`]*)`", line)
  return "\n".join(lines)


def _doc_commands():
  for path in sorted(glob.glob(os.path.join(REPO, "docs", "*.md"))) + [
      os.path.join(REPO, "README.md")]:
    with open(path, encoding="utf-8") as f:
      for argv in commands(markdown_code(f.read())):
        yield os.path.relpath(path, REPO), argv


@pytest.mark.parametrize("where,argv", list(_doc_commands()),
                         ids=lambda x: x if isinstance(x, str) else " ".join(x[:3]))
def test_doc_command_names_a_stage_a_config_and_its_keys(where, argv):
  stage = argv[0]
  if stage in ("--help", "STAGE"):  # `python -m rew_jax --help`, `... STAGE --help`.
    return
  assert stage in cli.STAGES, f"{where}: unknown stage {stage!r} in {argv}"
  if "--config" not in argv:
    return
  spec = argv[argv.index("--config") + 1]
  if not spec.partition(":")[0].endswith(".py") or re.search(r"[<\[]|/[A-Z]\b", spec):
    return  # A placeholder such as configs/<recipe>.py or C.
  config = config_lib.load_config(os.path.join(REPO, spec))
  overrides, _ = config_lib.split_overrides(argv)
  for key, value in overrides:
    if "<" in key or value.startswith("<"):
      continue
    config_lib.override(config, key, value)  # A ConfigError names an unknown key.
