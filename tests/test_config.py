"""Config loading, arg parsing, overrides and their errors."""

import textwrap

import ml_collections
import pytest

from rew_jax import config as config_lib
from rew_jax.errors import ConfigError


@pytest.fixture
def config_file(tmp_path):
  path = tmp_path / "cfg.py"
  path.write_text(textwrap.dedent('''
      """Run with: python -m rew_jax train --config cfg.py:runlocal --workdir /tmp/w"""
      from rew_jax import config as config_lib

      def get_config(arg=None):
        arg = config_lib.parse_arg(arg, runlocal=False, variant="B/16", steps=100)
        c = config_lib.ConfigDict()
        c.variant = arg.variant
        c.total_steps = 3 if arg.runlocal else arg.steps
        c.lr = 1e-3
        c.optim = config_lib.ConfigDict(dict(b1=0.9, clip=True, name="adamw"))
        c.mesh = config_lib.ConfigDict(dict(shape=(-1, 1, 1)))
        c.maybe = None
        return c
  '''))
  return path


def test_parse_arg_types_and_bare_flag():
  arg = config_lib.parse_arg("runlocal,variant=L/14,steps=7,lr=0.5", runlocal=False,
                             variant="B/16", steps=1, lr=1.0)
  assert arg.runlocal is True
  assert arg.variant == "L/14"
  assert arg.steps == 7 and isinstance(arg.steps, int)
  assert arg.lr == 0.5 and isinstance(arg.lr, float)


def test_parse_arg_unknown_key_names_closest():
  with pytest.raises(ConfigError, match=r"'varient'.*closest valid keys: variant"):
    config_lib.parse_arg("varient=L/14", variant="B/16", runlocal=False)


def test_parse_arg_bad_type():
  with pytest.raises(ConfigError, match="steps"):
    config_lib.parse_arg("steps=many", steps=1)


def test_load_with_arg_and_overrides(config_file):
  args_cfg = config_lib.load_config(f"{config_file}:runlocal")
  assert args_cfg.total_steps == 3
  plain = config_lib.load_config(str(config_file))
  assert plain.total_steps == 100
  config_lib.apply_overrides(plain, [("lr", "0.25"), ("optim.b1", "0.8"),
                                     ("optim.clip", "false"), ("mesh.shape", "(2,2,2)"),
                                     ("maybe", "3"), ("optim.name", "sgd")])
  assert plain.lr == 0.25
  assert plain.optim.b1 == 0.8
  assert plain.optim.clip is False
  assert tuple(plain.mesh.shape) == (2, 2, 2)
  assert plain.maybe == 3
  assert plain.optim.name == "sgd"


def test_override_unknown_key_lists_closest(config_file):
  cfg = config_lib.load_config(str(config_file))
  with pytest.raises(ConfigError, match=r"'optim\.b2'.*closest valid keys:.*optim\.b1"):
    config_lib.override(cfg, "optim.b2", "0.9")
  with pytest.raises(ConfigError, match=r"'totl_steps'.*total_steps"):
    config_lib.override(cfg, "totl_steps", "5")


def test_override_type_errors(config_file):
  cfg = config_lib.load_config(str(config_file))
  with pytest.raises(ConfigError, match="total_steps"):
    config_lib.override(cfg, "total_steps", "1.5")
  with pytest.raises(ConfigError, match="boolean"):
    config_lib.override(cfg, "optim.clip", "maybe")
  with pytest.raises(ConfigError, match="is a group"):
    config_lib.override(cfg, "optim", "3")


def test_split_overrides_both_spellings():
  overrides, rest = config_lib.split_overrides(
      ["--workdir", "w", "--config.lr=0.1", "--config.optim.b1", "0.5", "--config", "c.py"])
  assert overrides == [("lr", "0.1"), ("optim.b1", "0.5")]
  assert rest == ["--workdir", "w", "--config", "c.py"]


def test_missing_file_and_missing_get_config(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    config_lib.load_config(str(tmp_path / "nope.py"))
  bad = tmp_path / "bad.py"
  bad.write_text("x = 1\n")
  with pytest.raises(ConfigError, match="get_config"):
    config_lib.load_config(str(bad))


def test_packaged_configs_load_from_any_directory(tmp_path, monkeypatch):
  import os
  monkeypatch.chdir(tmp_path)  # No configs/ here: the copies installed with rew_jax are used.
  assert {"demo.py", "curate_demo.py"} <= set(config_lib.packaged_config_names())
  path = config_lib.packaged_config_path("curate_demo")
  assert path == config_lib.packaged_config_path("curate_demo.py") and os.path.isfile(path)
  want = config_lib.load_config(path).to_dict()
  for spec in ("configs/curate_demo.py", "curate_demo.py", "./configs/curate_demo.py"):
    assert config_lib.load_config(spec).to_dict() == want, spec


def test_a_config_file_beats_the_packaged_one_and_misses_name_them(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "demo.py").write_text(
      "from rew_jax import config as config_lib\n"
      "def get_config(arg=None):\n  return config_lib.ConfigDict(dict(mine=True))\n")
  assert config_lib.load_config("configs/demo.py").to_dict() == {"mine": True}
  with pytest.raises(ConfigError, match=r"'configs/nope\.py' does not exist; .*curate_demo\.py"):
    config_lib.load_config("configs/nope.py")
  # A missing file in a folder of one's own is not swapped for the shipped config of that name.
  with pytest.raises(ConfigError, match="does not exist"):
    config_lib.load_config(str(tmp_path / "mine" / "curate_demo.py"))
  with pytest.raises(ConfigError, match="ships no config 'nope.py'; packaged configs: .*demo"):
    config_lib.packaged_config_path("nope")


def test_shipped_configs_have_command_in_docstring():
  import glob
  import importlib.util
  paths = sorted(glob.glob("configs/*.py"))
  assert paths, "no configs found"
  for path in paths:
    spec = importlib.util.spec_from_file_location("c", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert "python -m rew_jax" in (module.__doc__ or ""), path
    assert isinstance(module.get_config(), ml_collections.ConfigDict), path


def test_section_checks_keys_against_the_defaults():
  schema = config_lib.ConfigDict(dict(a=1, group=dict(b=2), open=config_lib.ConfigDict()))
  whole = config_lib.ConfigDict(dict(world=dict(a=2, group=dict(b=3), open=dict(anything=1))))
  assert config_lib.section(whole, "world", schema).group.b == 3
  whole.world.group.c = 4
  with pytest.raises(config_lib.ConfigError, match=r"unknown config key world\.group\.c"):
    config_lib.section(whole, "world", schema)
  whole = config_lib.ConfigDict(dict(world=dict(aa=1)))
  with pytest.raises(config_lib.ConfigError, match="closest valid keys: a"):
    config_lib.section(whole, "world", schema)
  with pytest.raises(config_lib.ConfigError, match="has no `candidates` section"):
    config_lib.section(whole, "candidates", schema)

