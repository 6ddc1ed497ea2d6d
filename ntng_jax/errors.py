"""The one family of errors a user can fix from the command line.

Every such error subclasses `UserError`; its message is one sentence naming the cause (a config
field, a file, a checkpoint) and the fix. Entry points (`launch/common.py`) match the type and
print `error: <message>` without a traceback.
"""


class UserError(Exception):
  """A wrong config value, a missing or malformed input, an unusable checkpoint or table."""


class ConfigError(UserError, ValueError):
  """A config value is wrong; the message is one sentence naming the field and the fix."""
