"""big_vision-style configs: `configs/x.py:arg` plus `--config.some.key=value` overrides.

A config file defines `get_config(arg=None) -> ConfigDict`; its docstring shows the command
that runs it. `arg` is a comma-separated `key=value` string parsed by `parse_arg` into typed
defaults (`runlocal=True,variant=B/16`). Overrides may only touch keys that exist, with a
value of the key's type; anything else is a `ConfigError` naming the key and the closest
valid ones. Config errors are user errors: the CLI prints them on one line.
"""

from __future__ import annotations

import argparse
import ast
import copy
import difflib
import importlib.util
import os
from typing import Any, Iterable, Mapping, Sequence

import ml_collections

from rew_jax.errors import ConfigError

ConfigDict = ml_collections.ConfigDict


def _suggest(key: str, valid: Iterable[str]) -> str:
  valid = sorted(valid)
  close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
  if close:
    return f"closest valid keys: {', '.join(close)}"
  return f"valid keys: {', '.join(valid[:30])}{' ...' if len(valid) > 30 else ''}"


def _parse_bool(text: str) -> bool:
  low = text.strip().lower()
  if low in ("1", "true", "yes", "on"):
    return True
  if low in ("0", "false", "no", "off"):
    return False
  raise ValueError(f"{text!r} is not a boolean (use true/false)")


def coerce(text: str, like: Any) -> Any:
  """Parses the string `text` into a value of the type of `like` (the default)."""
  if isinstance(like, bool):
    return _parse_bool(text)
  if isinstance(like, int):
    return int(text)
  if isinstance(like, float):
    return float(text)
  if isinstance(like, str):
    return text
  if isinstance(like, (tuple, list)):
    value = ast.literal_eval(text) if text.strip()[:1] in "([" else tuple(
        p for p in text.split(",") if p)
    if not isinstance(value, (tuple, list)):
      value = (value,)
    if like:  # Coerce elements to the type of the default's first element.
      value = [coerce(v, like[0]) if isinstance(v, str) else v for v in value]
    return type(like)(value)
  # None or another type: a Python literal when it parses as one, else the string.
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_arg(arg: str | None, **defaults: Any) -> ConfigDict:
  """Parses `k1=v1,k2=v2` into a ConfigDict typed like `defaults`.

  A bare key means `key=True` (so `:runlocal` works). Unknown keys are an error.
  """
  result = ConfigDict(dict(defaults))
  if not arg:
    return result
  for item in arg.split(","):
    if not item:
      continue
    key, sep, text = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ConfigError(f"unknown config argument {key!r} in {arg!r}; {_suggest(key, defaults)}")
    if not sep:
      text = "true"
    try:
      result[key] = coerce(text, defaults[key])
    except (ValueError, SyntaxError) as e:
      raise ConfigError(f"config argument {key}={text!r}: {e}") from None
  return result


def _packaged_config_dirs() -> list[str]:
  """The folders of the configs shipped with rew_jax: the repository's configs/, installed
  as the `rew_jax.configs` package."""
  try:
    spec = importlib.util.find_spec("rew_jax.configs")
  except ModuleNotFoundError:
    spec = None
  if spec is not None and spec.submodule_search_locations:
    return [d for d in spec.submodule_search_locations if os.path.isdir(d)]
  # An editable install maps only folders with an __init__.py, so there configs/ is not
  # importable: it is then the folder beside the package in the checkout.
  here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
  return [here] if os.path.isdir(here) else []


def packaged_config_names() -> list[str]:
  """Names of the configs shipped with rew_jax (`demo.py`, `curate_demo.py`, ...)."""
  return sorted({n for d in _packaged_config_dirs() for n in os.listdir(d)
                 if n.endswith(".py") and not n.startswith("_")})


def packaged_config_path(name: str) -> str:
  """The file of the shipped config `name` (`demo.py` or `demo`), wherever rew_jax is
  installed: a wheel, an editable install or a checkout."""
  if not name.endswith(".py"):
    name += ".py"
  for folder in _packaged_config_dirs():
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return path
  raise ConfigError(f"rew_jax ships no config {name!r}; "
                    f"packaged configs: {', '.join(packaged_config_names()) or 'none'}")


def _config_file(path: str) -> str:
  """`path` when it is a file; else, for `configs/NAME.py` or a bare `NAME.py`, the shipped
  config of that name, so the documented commands work from any directory."""
  if os.path.isfile(path):
    return path
  folder, name = os.path.split(path)
  # Only a configs/ folder or no folder: a mistyped path to one's own config stays an error.
  if folder in ("", ".") or os.path.basename(os.path.normpath(folder)) == "configs":
    try:
      return packaged_config_path(name)
    except ConfigError:
      pass
  raise ConfigError(f"config file {path!r} does not exist; packaged configs (usable as "
                    f"configs/NAME.py from any directory): "
                    f"{', '.join(packaged_config_names()) or 'none'}")


def load_config(spec: str) -> ConfigDict:
  """Loads `path/to/config.py[:arg]` by calling its `get_config(arg)`.

  A path that is not a file but names a shipped config (`configs/demo.py`, `demo.py`) loads
  the copy installed with rew_jax.
  """
  path, _, arg = spec.partition(":")
  path = _config_file(path)
  name = "rew_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} defines no get_config(arg=None)")
  config = module.get_config(arg or None) if arg else module.get_config()
  if not isinstance(config, ConfigDict):
    raise ConfigError(f"{path}: get_config returned {type(config).__name__}, not a ConfigDict")
  return config


def check_keys(config: ConfigDict, schema: ConfigDict, where: str) -> None:
  """Raises a ConfigError for a key of `config` that `schema` (the section's defaults) does
  not have, naming the closest valid keys. A group whose default is empty or None is open
  (named evaluators, backend options, model overrides) and is not checked here."""
  for key, value in config.items():
    if key not in schema:
      raise ConfigError(f"unknown config key {where}.{key}; {_suggest(key, schema.keys())}")
    default = schema[key]
    if isinstance(default, ConfigDict) and len(default) and isinstance(value, ConfigDict):
      check_keys(value, default, f"{where}.{key}")


def _is_group(value: Any) -> bool:
  return isinstance(value, (ConfigDict, Mapping))


def merge(defaults: ConfigDict | dict, config: ConfigDict | dict | None, where: str
          ) -> ConfigDict:
  """`config` laid over `defaults` (a component's schema): the one merge rule of rew_jax.

  Keys of `config` must exist in `defaults` (else a ConfigError naming `where.key` and the
  closest valid keys). A group whose default is a non-empty group is merged key by key, at
  every depth: `tasks.weights={'qa': 1.0}` keeps the default weight of `entity`. A group
  whose default is empty is open (its reader checks it: the mesh's axes, named evaluator
  blocks) and, like every other value, is taken whole from `config`. Returns a new
  ConfigDict; neither argument is changed.
  """
  out = ConfigDict(copy.deepcopy(_plain(defaults)))
  for key, value in (config or {}).items():
    if key not in out:
      raise ConfigError(f"unknown config key {where}.{key}; {_suggest(key, out.keys())}")
    default = out[key]
    with out.ignore_type():
      if _is_group(default) and len(default) and _is_group(value):
        out[key] = merge(default, value, f"{where}.{key}")
      elif _is_group(default) and len(default) and value is not None:
        raise ConfigError(f"config key {where}.{key} is a group ({', '.join(default.keys())}); "
                          f"got {value!r}")
      else:
        out[key] = copy.deepcopy(_plain(value))
  return out


def _plain(value: Any) -> Any:
  """ConfigDicts and FieldReferences as plain dicts and values (for deep copies)."""
  if isinstance(value, ConfigDict):
    return value.to_dict()
  if isinstance(value, Mapping):  # e.g. a flax module's FrozenDict attribute.
    return {k: _plain(v) for k, v in value.items()}
  return value


def section(config: ConfigDict, name: str, schema: ConfigDict | None = None,
            source: str = "the config") -> ConfigDict:
  """The `name` section of a pipeline config, checked against `schema` when given.

  Every config has one section per stage (`world`, `candidates`, `curation`, `train`, ...),
  whether the file holds the whole pipeline or a single stage, so that a key is spelled the
  same for every stage: `--config.world.num_web_images=500`.
  """
  if name not in config:
    raise ConfigError(f"{source} has no `{name}` section (it has: "
                      f"{', '.join(config.keys()) or 'nothing'})")
  value = config[name]
  if schema is not None:
    check_keys(value, schema, name)
  return value


def flat_keys(config: ConfigDict, prefix: str = "") -> list[str]:
  """All dotted leaf and branch keys of `config`."""
  keys = []
  for key, value in config.items():
    full = f"{prefix}{key}"
    keys.append(full)
    if isinstance(value, ConfigDict):
      keys.extend(flat_keys(value, full + "."))
  return keys


def override(config: ConfigDict, dotted: str, text: str) -> None:
  """Sets `config.<dotted>` from the string `text`, type-checked against the default."""
  parts = dotted.split(".")
  node = config
  for i, part in enumerate(parts):
    if not isinstance(node, ConfigDict) or part not in node:
      raise ConfigError(f"unknown config key {dotted!r}; {_suggest(dotted, flat_keys(config))}")
    if i < len(parts) - 1:
      node = node[part]
  leaf, default = parts[-1], node[parts[-1]]
  if isinstance(default, ConfigDict):
    raise ConfigError(f"config key {dotted!r} is a group; set one of its fields: "
                      f"{', '.join(dotted + '.' + k for k in default.keys())}")
  try:
    value = coerce(text, default)
  except (ValueError, SyntaxError) as e:
    raise ConfigError(f"--config.{dotted}={text!r}: {e}") from None
  with node.ignore_type():
    node[leaf] = value


def apply_overrides(config: ConfigDict, overrides: Sequence[tuple[str, str]]) -> ConfigDict:
  for dotted, text in overrides:
    override(config, dotted, text)
  return config


def split_overrides(argv: Sequence[str]) -> tuple[list[tuple[str, str]], list[str]]:
  """Separates `--config.k=v` / `--config.k v` from the other arguments."""
  overrides, rest = [], []
  i = 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith("--config."):
      key, sep, value = arg[len("--config."):].partition("=")
      if not sep:
        if i + 1 >= len(argv):
          raise ConfigError(f"{arg} needs a value")
        i += 1
        value = argv[i]
      overrides.append((key, value))
    else:
      rest.append(arg)
    i += 1
  return overrides, rest


def add_config_arguments(parser: argparse.ArgumentParser, default: str | None = None) -> None:
  """Adds `--config` and `--workdir` to a stage's parser."""
  parser.add_argument(
      "--config", default=default, required=default is None,
      help="config file and optional arg, e.g. configs/demo.py:runlocal=True; "
      "override any key with --config.some.key=value")
  parser.add_argument("--workdir", required=True, help="directory for all outputs of the run")


def parse_stage_args(parser: argparse.ArgumentParser, argv: Sequence[str]):
  """Parses a stage's argv: returns (namespace, config with overrides applied)."""
  overrides, rest = split_overrides(argv)
  args = parser.parse_args(rest)
  config = load_config(args.config)
  apply_overrides(config, overrides)
  return args, config
