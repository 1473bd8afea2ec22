"""Errors that reach the user as one line on stderr.

Every layer raises `UsageError` (bad input: exit 2) or `RunError` (the input was fine but
the work failed: exit 1). Only the CLI turns them into messages and exit codes; nothing
here imports torch.
"""


class GptcliError(Exception):
    """An error with a message fit to show a user as it is."""

    exit_code = 1


class UsageError(GptcliError):
    """Bad input: a missing file, an impossible setting, a folder that is not a run."""

    exit_code = 2


class RunError(GptcliError):
    """A runtime failure: a write that failed, a loss that went NaN."""

    exit_code = 1
