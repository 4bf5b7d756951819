"""The name → component registries: registration, lookup by convention, loud failures."""

import importlib
import sys
import textwrap
import traceback

import pytest

from rew_jax import registry
from rew_jax.errors import UnknownNameError


def write_package(root, name, modules):
  """`root/name/` with a registry REG of kind 'thing' in __init__ and the given modules."""
  (root / name).mkdir()
  (root / name / "__init__.py").write_text(
      "from rew_jax import registry\n"
      f"REG = registry.Registry('thing', package={name!r})\n")
  for module, source in modules.items():
    (root / name / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def plugins(tmp_path, monkeypatch):
  """A fresh package `plugpkg_<n>` on sys.path: round and square (one per module), a helper
  module registering nothing, and `needs_dep`, which imports a dependency that is absent."""
  name = f"plugpkg_{tmp_path.name.replace('-', '_')}"
  write_package(tmp_path, name, {
      "round": f"""
          from {name} import REG

          @REG.register("round")
          def make_round():
            return "round"
          """,
      "square": f"""
          from {name} import REG
          REG.register("square", len)
          """,
      "helpers": "SIDES = 4\n",
      "needs_dep": f"""
          import no_such_dependency_xyz
          from {name} import REG
          REG.register("needs_dep", object())
          """,
  })
  monkeypatch.syspath_prepend(str(tmp_path))
  return importlib.import_module(name)


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


def test_default_modules_are_imported_on_first_lookup(tmp_path, monkeypatch):
  (tmp_path / "my_ops_mod.py").write_text(
      "from rew_jax import registry\n"
      "import my_ops_registry\n"
      "my_ops_registry.REG.register('op_a', len)\n"
      "my_ops_registry.REG.register('op_b', min)\n")
  (tmp_path / "my_ops_registry.py").write_text(
      "from rew_jax import registry\n"
      "REG = registry.Registry('op', modules=['my_ops_mod'])\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  reg = importlib.import_module("my_ops_registry").REG
  assert "my_ops_mod" not in sys.modules
  assert reg.get("op_b") is min
  assert reg.names() == ["op_a", "op_b"]
  with pytest.raises(ModuleNotFoundError):
    registry.Registry("thing", modules=["no_such_module_xyz"]).get("x")


def test_lookup_by_convention_imports_only_the_named_module(plugins):
  reg, pkg = plugins.REG, plugins.__name__
  # Candidates come from the package's files: neither module is imported to list them.
  assert reg.names() == ["needs_dep", "round", "square"]
  assert f"{pkg}.round" not in sys.modules and f"{pkg}.needs_dep" not in sys.modules
  assert reg.get("round")() == "round"
  assert f"{pkg}.round" in sys.modules and f"{pkg}.square" not in sys.modules
  assert reg.get("square") is len
  assert "square" in reg and "oval" not in reg


def test_unknown_name_lists_candidates_without_importing_them(plugins):
  reg, pkg = plugins.REG, plugins.__name__
  with pytest.raises(UnknownNameError) as e:
    reg.get("rond")
  assert "unknown thing 'rond'. Did you mean 'round'?" in str(e.value)
  for name in ("rond", "helpers", "not.a.module"):
    with pytest.raises(UnknownNameError) as e:
      reg.get(name)
    # A helper module (imported by the lookup, registering nothing) is not offered.
    assert str(e.value).endswith("Known things: needs_dep, round, square")
  assert f"{pkg}.round" not in sys.modules and f"{pkg}.needs_dep" not in sys.modules


def test_missing_dependency_keeps_its_import_error(plugins):
  reg, pkg = plugins.REG, plugins.__name__
  for name in ("needs_dep", f"{pkg}.needs_dep:needs_dep"):
    with pytest.raises(ModuleNotFoundError) as e:
      reg.get(name)
    assert e.value.name == "no_such_dependency_xyz"
    assert not isinstance(e.value, UnknownNameError)
    # The traceback still shows the line of the module that needs the dependency.
    frames = traceback.extract_tb(e.value.__traceback__)
    assert any(f.filename.endswith("needs_dep.py") for f in frames)


def test_module_colon_name_registers_components_from_anywhere(tmp_path, monkeypatch):
  # A user's evaluator outside the package, registered into the project's registry.
  monkeypatch.setattr(registry, "EVALUATORS", registry.Registry("evaluator",
                                                                package="rew_jax.evaluators"))
  (tmp_path / "my_project_evals.py").write_text(
      "from rew_jax import registry\n\n"
      "@registry.EVALUATORS.register('my_eval')\n"
      "class MyEval:\n"
      "  pass\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  cls = registry.EVALUATORS.get("my_project_evals:my_eval")
  assert cls.__name__ == "MyEval" and cls.__module__ == "my_project_evals"
  assert registry.EVALUATORS.get("my_eval") is cls  # Registered now, also by plain name.

  with pytest.raises(UnknownNameError, match="there is no module 'no_such_pkg_xyz.evals'"):
    registry.EVALUATORS.get("no_such_pkg_xyz.evals:my_eval")
  with pytest.raises(UnknownNameError, match="module 'my_project_evals' registers no 'other'"):
    registry.EVALUATORS.get("my_project_evals:other")


def test_project_keys_equal_module_names():
  for reg, package, expected in [
      (registry.MODELS, "rew_jax.models", {"git", "clip_image", "dinov2"}),
      (registry.EVALUATORS, "rew_jax.evaluators", {"oven", "zeroshot", "knn_matching"}),
      (registry.CURATION_BACKENDS, "rew_jax.curation.backends",
       {"gemini", "gemma", "openai", "simulated", "top1_candidate"}),
  ]:
    assert set(reg.names()) == expected
    for name in expected:
      assert reg.get(name).__module__ == f"{package}.{name}"
  for name in registry.CURATION_BACKENDS.names():
    assert registry.CURATION_BACKENDS.get(name).name == name


def test_project_unknown_name_lists_the_package_modules():
  with pytest.raises(UnknownNameError) as e:
    registry.EVALUATORS.get("ovne")
  msg = str(e.value)
  assert "Did you mean 'oven'" in msg
  assert msg.endswith("Known evaluators: knn_matching, oven, zeroshot")


def test_pp_ops_come_from_their_default_module():
  assert registry.PP_OPS.get("resize").__module__ == "rew_jax.data.ops"
  assert {"decode", "tokenize", "pad"} <= set(registry.PP_OPS.names())


TINY_FEATURE_MODELS = {
    "clip_image": dict(name="clip_image", variant="mu/8", image_size=16, projection_dim=8,
                       vit=dict(width=32, depth=1, num_heads=2, mlp_dim=64)),
    "dinov2": dict(name="dinov2", width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=8,
                   image_size=16)}


@pytest.mark.parametrize("name", sorted(TINY_FEATURE_MODELS))
def test_frozen_feature_models_refuse_training_and_embed_square_images(name):
  import jax  # pylint: disable=import-outside-toplevel
  from rew_jax.errors import ConfigError  # pylint: disable=import-outside-toplevel
  importlib.import_module(f"rew_jax.models.{name}")
  config = TINY_FEATURE_MODELS[name]
  model = registry.MODELS.get(name)(config)
  (images,) = model.dummy_inputs(batch=2)
  assert images.shape == (2, 16, 16, 3)
  with pytest.raises(ConfigError, match=f"{name} is a frozen feature model"):
    model.logits_and_targets({}, {}, rng=None, train=True)
  params = model.module.init(jax.random.key(0), images)["params"]
  out = model.predict_fns()["embed"](params, {"image": images})["embedding"]
  assert out.shape[0] == 2 and out.ndim == 2
