"""The name → component registries."""

import pytest

from rew_jax import registry
from rew_jax.errors import UnknownNameError


def test_register_and_get():
  reg = registry.Registry("widget")

  @reg.register("round")
  def make_round():
    return "round"

  reg.register("square", len)
  assert reg.get("round") is make_round
  assert reg.get("square") is len
  assert reg.names() == ["round", "square"]
  assert "round" in reg and "oval" not in reg


def test_unknown_name_lists_known_and_closest():
  reg = registry.Registry("widget")
  reg.register("resize", object())
  reg.register("decode", object())
  with pytest.raises(UnknownNameError) as e:
    reg.get("resise")
  msg = str(e.value)
  assert "unknown widget 'resise'" in msg
  assert "Did you mean 'resize'" in msg
  assert "Known widgets: decode, resize" in msg


def test_double_registration_is_an_error():
  reg = registry.Registry("widget")
  reg.register("a", len)
  reg.register("a", len)  # Same object again (module re-import) is fine.
  with pytest.raises(ValueError, match="registered twice"):
    reg.register("a", min)


def test_modules_are_imported_lazily(tmp_path, monkeypatch):
  (tmp_path / "my_plugin_mod.py").write_text(
      "from rew_jax import registry\n"
      "REG = registry.Registry('thing')\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  reg = registry.Registry("thing", modules=["json"])
  reg.add_module("my_plugin_mod")
  assert reg.names() == []  # Imports ran without registering anything.
  with pytest.raises(ModuleNotFoundError):
    registry.Registry("thing", modules=["no_such_module_xyz"]).get("x")
