"""The one exception family users see.

Errors caused by the user's input (a config key, a file, a record) derive from `UserError`:
the CLI prints their message on one line and exits non-zero instead of showing a traceback.
Bugs stay ordinary exceptions so that they keep their traceback.
"""


class UserError(Exception):
  """Bad input named precisely: which file, record, key or name, and what was wrong."""


class ConfigError(UserError):
  """An unknown or mistyped config key, or an unparsable config argument."""


class UnknownNameError(UserError, LookupError):
  """A registry lookup for a name nobody registered."""


class StageUnavailableError(UserError):
  """A CLI stage whose implementation is not part of this installation yet."""
