"""The one exception type for mistakes a user can fix (bad config, missing data, bad workdir).

`main.py` turns it into a single `error: ...` line on stderr and exit code 2; anything else
is a bug and keeps its traceback.
"""


class UserError(Exception):
  """A problem with the user's input; the message says what was wrong and what to do."""


class NonFiniteLossError(UserError):
  """Training produced a NaN/Inf loss; the message names the step."""
