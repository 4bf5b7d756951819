"""What every stage's command line shares: the parser, the config sections, progress lines.

A stage reads one config shape: a `get_config(arg)` file whose ConfigDict has one section
per stage (`world`, `candidates`, `curation`, `train`, ...). A stage that has defaults fills
in its section when the file (or the absence of one) leaves it out, then applies the
`--config.SECTION.key=value` overrides, then checks the section's keys against its defaults.
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Mapping, Sequence

from rew_jax import config as config_lib
from rew_jax import distributed

ConfigDict = config_lib.ConfigDict


def parser(stage: str, doc: str | None) -> argparse.ArgumentParser:
  return argparse.ArgumentParser(prog=f"python -m rew_jax {stage}", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def add_config(p: argparse.ArgumentParser, *, default: str | None = None,
               required: bool = False, sections: str = "") -> None:
  where = f" (its {sections} section{'s' if ',' in sections else ''})" if sections else ""
  p.add_argument(
      "--config", default=default, required=required and default is None,
      help=f"config file and optional arg, e.g. configs/demo.py:runlocal{where}; override "
      "any key with --config.SECTION.key=value")


def add_workdir(p: argparse.ArgumentParser, help_text: str) -> None:
  p.add_argument("--workdir", required=True, help=help_text)


def parse(p: argparse.ArgumentParser, argv: Sequence[str],
          defaults: Mapping[str, Callable[[], ConfigDict]] = ()
          ) -> tuple[argparse.Namespace, ConfigDict]:
  """Parses argv: (namespace, config). Sections named in `defaults` and absent from the file
  are filled with their defaults before the overrides apply."""
  overrides, rest = config_lib.split_overrides(argv)
  args = p.parse_args(rest)
  # Multi-host: join the job (launch/ sets the environment) before anything touches the XLA
  # backend, and after --help, which must not wait for the other hosts.
  distributed.initialize_from_env()
  distributed.configure_logging()
  config = config_lib.load_config(args.config) if args.config else ConfigDict()
  for name, make in dict(defaults).items():
    if name not in config:
      config[name] = make()
  config_lib.apply_overrides(config, overrides)
  args.config_source = args.config or "the default config"
  return args, config


class Progress:
  """`== stage ==` headers and lines on stdout, flushed, and the time since the start; on
  process 0 only, so that a multi-host run prints one copy."""

  def __init__(self):
    self.start = time.time()

  def header(self, text: str) -> None:
    self.line(f"== {text} ==")

  def line(self, text: str) -> None:
    if distributed.process_index() == 0:
      print(text, flush=True)

  def elapsed(self) -> float:
    return time.time() - self.start
