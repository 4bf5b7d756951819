"""Name → component registries, loud on unknown names.

Components register themselves where they are defined:

    @registry.PP_OPS.register("resize")
    def get_resize(size): ...

and configs refer to them by string. Each registry knows which modules hold its
components and imports them on first lookup, so that a config can name a component
without the caller importing its module first.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Iterable

from rew_jax.errors import UnknownNameError


class Registry:
  """A mapping from names to components of one kind (models, pp ops, ...)."""

  def __init__(self, kind: str, modules: Iterable[str] = ()):
    self.kind = kind
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
    if self._imported:
      return
    self._imported = True
    for module in self._modules:
      importlib.import_module(module)

  def add_module(self, module: str) -> None:
    """Declares one more module that registers components of this kind."""
    self._modules.append(module)
    self._imported = False

  def names(self) -> list[str]:
    self._import_modules()
    return sorted(self._items)

  def get(self, name: str) -> Any:
    self._import_modules()
    if name not in self._items:
      known = sorted(self._items)
      close = difflib.get_close_matches(name, known, n=3)
      hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
      raise UnknownNameError(
          f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(known) or '(none)'}")
    return self._items[name]

  def __contains__(self, name: str) -> bool:
    self._import_modules()
    return name in self._items


# The project's registries. Each lists the modules that register into it; a stage adds its
# module here when it lands.
MODELS = Registry("model", modules=["rew_jax.models.git"])
PP_OPS = Registry("pp op", modules=["rew_jax.data.ops"])
EVALUATORS = Registry("evaluator", modules=["rew_jax.evaluators.oven", "rew_jax.evaluators.knn_matching", "rew_jax.evaluators.zeroshot"])
CURATION_BACKENDS = Registry("curation backend", modules=["rew_jax.curation.backends"])
