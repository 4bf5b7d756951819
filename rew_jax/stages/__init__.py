"""The command-line stages: one module per `python -m rew_jax STAGE`.

Each stage parses its arguments, resolves its config section, decides from the stamps in
the workdir (`rew_jax.workdir`) whether to reuse or redo its outputs, prints progress, and
calls library functions that know nothing of the command line. Nothing in the library
imports this package.
"""
