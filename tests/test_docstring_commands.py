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
import os
import re
import shlex

import pytest

from rew_jax import __main__ as cli
from rew_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Configs whose commands need what a test cannot start here, and where they are tested.
NOT_RUN = {
    "demo.py": "its command is the README's; tests/test_demo.py runs its runlocal form",
    "curate_gemini.py": "needs Gemini; tests/curation/test_http_backends.py runs the backend "
                        "against a local stub server",
    "curate_openai.py": "needs an OpenAI-compatible server; tested against a local stub",
    "curate_gemma.py": "needs Gemma weights and the gemma extra",
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
  """OVEN/ in the official layout's place, made of the embedded world's files."""
  (root / "OVEN").mkdir()
  for f in glob.glob(os.path.join(world, "oven", "*.jsonl")):
    os.symlink(f, root / "OVEN" / os.path.basename(f))
  os.symlink(os.path.join(world, "images"), root / "OVEN" / "images")


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
  assert os.path.isfile(scratch / "W" / "finetune" / "eval" / "oven_val" / "step_3" /
                        "predictions_entity.jsonl")
  assert glob.glob(str(scratch / "bucket" / "rew_gitl" / "checkpoints" / "3"))


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
