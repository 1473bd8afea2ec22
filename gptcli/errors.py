"""Errors that reach the user as one line on stderr.

Every layer raises `UsageError` (bad input: exit 2) or `RunError` (the input was fine but
the work failed: exit 1). `SettingError` is a usage error about named settings: the
stages name the setting (`n_embd`), and the layer that knows where the value came from
names it as the user wrote it (`--n-embd`, or a key of a config.json). Only the CLI turns
errors into messages and exit codes; nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Callable


class GptcliError(Exception):
    """An error with a message fit to show a user as it is."""

    exit_code = 1


class UsageError(GptcliError):
    """Bad input: a missing file, an impossible setting, a folder that is not a run."""

    exit_code = 2


class RunError(GptcliError):
    """A runtime failure: a write that failed, a loss that went NaN."""

    exit_code = 1


class ReportedElsewhere(GptcliError):
    """A failure another process has already told the user about (under torchrun, rank 0
    speaks for every rank): exit with `exit_code` and print nothing."""

    def __init__(self, exit_code: int = 1):
        super().__init__("")
        self.exit_code = exit_code


class Setting(str):
    """A setting's name inside a SettingError's message."""


class SettingError(UsageError):
    """A bad value for one or more settings. The message is text with the settings' names
    marked (`Setting("n_embd")`), so one message serves the flag (`--n-embd 30 is not
    divisible by --n-head 4`) and the file (`config.json: n_embd 30 is not divisible by
    n_head 4`). Values stay plain text, whatever characters they hold."""

    def __init__(self, *parts: str):
        self.parts = parts
        super().__init__(self.render())

    @property
    def settings(self) -> list[str]:
        return [str(p) for p in self.parts if isinstance(p, Setting)]

    def render(self, name: Callable[[str], str] = str) -> str:
        return "".join(name(str(p)) if isinstance(p, Setting) else p for p in self.parts)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def printable(text: str) -> str:
    """`text` as it can be shown or encoded: a path's bytes that are not UTF-8 (which
    Python holds as lone surrogates, and no UTF-8 stream, JSON or font takes) written as
    \\xNN escapes. The one rule for messages, --json and figures."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
