"""The package's import graph: no cycles, and every import points down the layers.

    stages → rew_jax (its public names) → runs → train, plot → curation, evaluators
           → kb, model_setup → models → data
           → checkpoint → records, sharding, metrics, optim, device_prefetch
           → config, registry, workdir, distributed, xla_cpu → storage → errors

Imports inside functions count as much as those at the top of a module: a function-local
import that dodges a cycle is still a cycle. Nothing imports `stages` but `__main__`.
"""

import ast
import os
import re

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "rew_jax")

# Rank of each top-level module or subpackage: imports go to a lower rank, or stay inside
# their own subpackage.
LAYERS = (
    ("errors",),
    ("storage",),
    ("config", "registry", "workdir", "distributed", "xla_cpu"),
    ("records", "sharding", "metrics", "optim", "device_prefetch"),
    ("checkpoint",),
    ("data",),
    ("models",),
    ("kb", "model_setup"),
    ("curation", "evaluators"),
    ("train", "plot"),
    ("runs",),
    # The package's own names are loaded on first use (rew_jax/__init__.py), so importing a
    # module below never imports what is above it.
    ("__init__",),
    ("stages",),
    ("__main__",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, str]:
  """Dotted module name → file path, for every module of the package."""
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        rel = os.path.relpath(os.path.join(root, name), os.path.dirname(PACKAGE))
        dotted = rel[:-3].replace(os.sep, ".")
        out[dotted.removesuffix(".__init__")] = os.path.join(root, name)
  return out


def _imports(path: str, module: str, known: set[str]) -> set[str]:
  """The package modules `path` imports (anywhere in the file)."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # Relative import.
        parent = module.split(".")[:-node.level] if not path.endswith("__init__.py") else (
            module.split(".")[:len(module.split(".")) - node.level + 1])
        base = ".".join(parent + ([base] if base else []))
      names = [f"{base}.{a.name}" for a in node.names] + [base]
    else:
      continue
    for name in names:
      while name and name not in known:
        name = name.rpartition(".")[0]
      if name and name.startswith("rew_jax") and name != module:
        found.add(name)
  return found


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  known = set(modules)
  return {m: _imports(p, m, known) - {"rew_jax"} for m, p in modules.items()}


def _top(module: str) -> str:
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
  missing = sorted({_top(m) for m in _graph()} - set(RANK))
  assert not missing, f"add these to LAYERS in {__file__}: {missing}"


def test_imports_point_down_the_layers():
  wrong = []
  for module, imports in _graph().items():
    for target in imports:
      a, b = _top(module), _top(target)
      if a != b and RANK.get(b, -1) >= RANK.get(a, -1):
        wrong.append(f"{module} → {target}")
  assert not wrong, "wrong-way imports:\n  " + "\n  ".join(sorted(wrong))


def test_no_import_cycles():
  graph = _graph()
  state, stack, cycles = {}, [], []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        cycles.append(" → ".join(stack[stack.index(nxt):] + [nxt]))
      elif nxt not in state:
        visit(nxt)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)
  assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_the_checker_sees_function_local_and_wrong_way_imports(tmp_path):
  """The parser finds an import inside a function, so the checks above can fail."""
  path = tmp_path / "m.py"
  path.write_text("def f():\n  from rew_jax.stages import demo\n  return demo\n")
  found = _imports(str(path), "rew_jax.records", {"rew_jax.stages.demo", "rew_jax.stages"})
  assert found == {"rew_jax.stages.demo", "rew_jax.stages"}
  assert RANK["stages"] > RANK["records"]


@pytest.mark.parametrize("stage", ["world", "candidates", "curate", "records", "train", "eval",
                                   "plot", "demo"])
def test_each_cli_stage_is_a_stages_module(stage):
  assert os.path.isfile(os.path.join(PACKAGE, "stages", f"{stage}.py"))


def test_docs_architecture_names_every_module():
  """docs/architecture.md is the map: each module is named there (as `name` or name.py)."""
  with open(os.path.join(os.path.dirname(PACKAGE), "docs", "architecture.md")) as f:
    doc = f.read()
  words = set(re.findall(r"[A-Za-z_0-9]+", doc))
  missing = sorted(m for m in _modules() if m.rpartition(".")[2] not in words | {"__init__"})
  assert not missing, f"name these in docs/architecture.md: {missing}"
