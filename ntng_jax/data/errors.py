"""The data package's user-facing error type."""

from __future__ import annotations

from ntng_jax.errors import UserError


class DataError(UserError, ValueError):
  """A data input is unusable; the message is one sentence naming the input and the fix.

  ``launch.common.run_cleanly`` prints it as ``error: <message>`` without a traceback.
  """
