"""The base of every error a user can fix from the command line.

Its message is one sentence naming the cause (a config field, a file, a checkpoint) and the fix;
entry points (`launch/common.py`) print it as `error: <message>` without a traceback.
"""


class UserError(Exception):
  """A wrong config value, a missing or malformed input, an unusable checkpoint or table."""
