"""Name → component registries, resolved by convention and loud on unknown names.

Components register themselves where they are defined:

    @registry.EVALUATORS.register("oven")      # in rew_jax/evaluators/oven.py
    class OvenEvaluator: ...

and configs refer to them by string. A lookup imports the module that holds the name, so a
config can name a component without anyone importing its module first:

  "oven"                  a registry with a package finds `<package>.oven`: one component per
                          module, named like its file. Adding one is adding a file.
  "resize"                a registry with default modules (many components per module, as pp
                          ops) imports those modules on its first lookup.
  "my_project.evals:foo"  imports `my_project.evals` (which registers "foo") and returns "foo":
                          components outside this package, with nothing to edit here.

An unknown name raises `UnknownNameError` listing what is known: the names registered so far
plus the package's modules that follow the convention, found without importing them (an
optional dependency is imported only when its component is chosen). A module that exists but
fails on a missing dependency raises that ImportError unchanged, with its traceback.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import pkgutil
import re
from typing import Any, Callable, Iterable

from rew_jax.errors import UnknownNameError


def _import(module: str) -> bool:
  """Imports `module`; False if it does not exist, an ImportError from inside it propagates."""
  try:
    importlib.import_module(module)
  except ModuleNotFoundError as e:
    # Only `module` itself (or a parent package) missing means "no such name"; anything else
    # is a dependency the module needs and keeps its traceback.
    if e.name is None or not (module == e.name or module.startswith(e.name + ".")):
      raise
    return False
  return True


class Registry:
  """A mapping from names to components of one kind (models, pp ops, ...).

  Attributes:
    kind: what the components are, for messages ("evaluator").
  """

  def __init__(self, kind: str, *, package: str | None = None, modules: Iterable[str] = ()):
    """`package`: where `name` lives as module `<package>.<name>`; `modules`: imported first."""
    self.kind = kind
    self._package = package
    self._modules = list(modules)
    self._items: dict[str, Any] = {}
    self._imported = False

  def register(self, name: str, component: Any = None) -> Callable[[Any], Any] | Any:
    """Registers `component` under `name`; used bare or as a decorator."""
    if component is not None:
      self._add(name, component)
      return component

    def decorator(obj):
      self._add(name, obj)
      return obj

    return decorator

  def _add(self, name: str, component: Any) -> None:
    existing = self._items.get(name)
    if existing is not None and existing is not component:
      raise ValueError(f"{self.kind} {name!r} is registered twice: {existing!r} and {component!r}")
    self._items[name] = component

  def _import_modules(self) -> None:
    if not self._imported:
      for module in self._modules:
        importlib.import_module(module)
      self._imported = True

  def _package_modules(self) -> list[str]:
    """The package's modules that register their own name, read from source, not imported."""
    if self._package is None:
      return []
    out = []
    for info in pkgutil.iter_modules(importlib.import_module(self._package).__path__):
      if info.name.startswith("_"):
        continue
      spec = importlib.util.find_spec(f"{self._package}.{info.name}")
      origin = spec.origin if spec else None
      if origin and origin.endswith(".py"):
        with open(origin, encoding="utf-8") as f:
          # Helpers beside the components (`common`, `base`) register nothing and are skipped.
          if not re.search(rf"""\.register\(\s*["']{re.escape(info.name)}["']""", f.read()):
            continue
      out.append(info.name)
    return out

  def names(self) -> list[str]:
    """Registered names and the package's conventional modules, without importing those."""
    self._import_modules()
    return sorted(set(self._items) | set(self._package_modules()))

  def get(self, name: str) -> Any:
    module, colon, key = name.rpartition(":")
    if colon:
      if not module or not _import(module):
        raise self._unknown(name, f"there is no module {module!r}")
      if key not in self._items:
        raise self._unknown(name, f"module {module!r} registers no {key!r}")
      return self._items[key]
    self._import_modules()
    if name not in self._items and self._package and name.isidentifier():
      _import(f"{self._package}.{name}")
    if name not in self._items:
      raise self._unknown(name)
    return self._items[name]

  def _unknown(self, name: str, reason: str = "") -> UnknownNameError:
    known = self.names()
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    reason = f" ({reason})" if reason else ""
    return UnknownNameError(f"unknown {self.kind} {name!r}{reason}.{hint} "
                            f"Known {self.kind}s: {', '.join(known) or '(none)'}")

  def __contains__(self, name: str) -> bool:
    try:
      self.get(name)
    except UnknownNameError:
      return False
    return True


# The project's registries. A component is one new module in the package (or a module
# anywhere, named as "module:name"); nothing here changes when one is added.
MODELS = Registry("model", package="rew_jax.models")
PP_OPS = Registry("pp op", modules=["rew_jax.data.ops"])
EVALUATORS = Registry("evaluator", package="rew_jax.evaluators")
CURATION_BACKENDS = Registry("curation backend", package="rew_jax.curation.backends")
TASKS = Registry("task", package="rew_jax.data.tasks")


def lazy_names(package: str, names: dict[str, str]):
  """`__getattr__` and `__dir__` for a package whose public names load on first use (PEP
  562): `names` maps a name to "module" or "module:attribute" (module relative to the
  package when it starts with "."). Importing the package then imports none of them, and
  the modules behind it never import the package's names, so no cycle arises."""
  namespace = importlib.import_module(package).__dict__

  def __getattr__(name: str) -> Any:  # pylint: disable=invalid-name
    if name not in names:
      raise AttributeError(f"module {package!r} has no attribute {name!r}")
    module, _, attribute = names[name].partition(":")
    value = getattr(importlib.import_module(module, package), attribute or name)
    namespace[name] = value  # Later lookups skip __getattr__.
    return value

  def __dir__() -> list[str]:  # pylint: disable=invalid-name
    return sorted(set(namespace) | set(names))

  return __getattr__, __dir__
