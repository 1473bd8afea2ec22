"""The process around a command: standard streams made safe, the product written to
stdout, and every outcome turned into gptcli's conventions (one `error:` line and exit
code 2 for bad input, 1 for a failure, 130 for Ctrl-C, 0 when stdout's reader leaves).

cli/app.py defines the commands; `run(app)` runs one. Imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys

import typer

from gptcli.config import flag
from gptcli.console import say
from gptcli.errors import GptcliError, ReportedElsewhere, RunError, SettingError, UsageError, printable

state = {"debug": False, "stdout_closed": False}


def stdout_wanted() -> None:
    """Refuse, before any work, a command whose product would go to a closed stdout."""
    if state["stdout_closed"]:
        raise UsageError("stdout is closed, and this command writes its output there: redirect it to a file or "
                         "/dev/null")


@contextlib.contextmanager
def writing_stdout():
    """`gptcli ... | head` closes the pipe early: that is the reader's choice, not an
    error, so stop quietly with exit 0 (click's own handling would exit 1). Any other
    failed write (a full disk) is named as stdout's."""
    try:
        yield
    except BrokenPipeError:
        _silence_stdout()
        raise typer.Exit(0) from None
    except OSError as e:
        _silence_stdout()
        raise RunError(f"cannot write to stdout: {e.strerror or e}") from None


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null, so the final flush at exit cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)




def guard_streams() -> None:
    """Make stdin, stdout and stderr safe to use whatever the caller did to them. A
    standard fd that was closed at start (or left open the wrong way, as a launcher script
    can leave it) is opened on /dev/null: otherwise the next file gptcli opens could get
    that number and a print would write into it (and Python's print to a missing stderr
    falls back to stdout). Text goes out as UTF-8 whatever the locale says."""
    state["stdout_closed"] = False
    for fd, wanted in ((0, (os.O_RDONLY, os.O_RDWR)), (1, (os.O_WRONLY, os.O_RDWR)), (2, (os.O_WRONLY, os.O_RDWR))):
        try:
            usable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE in wanted
        except OSError:
            usable = False
        if usable:
            continue
        if fd == 1:
            state["stdout_closed"] = True
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if fd == 0:
            sys.stdin = None  # fd 0 stays taken by /dev/null; readers of stdin say it is closed
        else:
            setattr(sys, ("stdout", "stderr")[fd - 1], open(fd, "w", encoding="utf-8", closefd=False))
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8")


def one_line(message: str) -> str:
    """An error message as the one line it must be: a newline or CR inside it (a path
    can hold them) is written escaped, and so are a path's bytes that are not UTF-8."""
    return printable(message).replace("\r", "\\r").replace("\n", "\\n")


def run(app: typer.Typer) -> None:
    """Run the app with gptcli's error and exit-code conventions."""
    guard_streams()
    try:
        rv = app(standalone_mode=False, prog_name="gptcli")  # also under python -m: completion keys on it
        code = rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        code = e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except ReportedElsewhere as e:
        _quiet_exit(e.exit_code)
    except GptcliError as e:
        if state["debug"]:
            raise
        message = e.render(flag) if isinstance(e, SettingError) else str(e)  # a setting that reached here is a flag
        say(f"error: {one_line(message)}")
        code = e.exit_code
    except BrokenPipeError:
        code = 0  # the reader went away (e.g. `| head`): not an error
    except Exception as e:
        if _is_usage_error(e):  # bad flags, caught by the parser (typer's click)
            ctx = getattr(e, "ctx", None)
            if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
                say(ctx.get_help())
            else:
                hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
                say(f"error: {one_line(e.format_message())}{hint}")
            code = 2
        elif isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG and not state["debug"]:
            # a path the user gave, whichever check met it first: their input, not a failure
            name = e.filename if isinstance(e.filename, str) else "a path given"
            say(f"error: {one_line(name)}: a name in it is longer than the file system allows (255 bytes): "
                "choose a shorter one")
            code = 2
        elif state["debug"]:
            raise
        else:
            what = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}" if str(e).strip() else type(e).__name__
            say(f"error: {one_line(what)} (run with --debug for a traceback)")
            code = 1
    if code in (130, 143):  # Ctrl-C (typer turns it into exit code 130) or SIGTERM
        say("interrupted")
    _quiet_exit(code)


def end_process(code: int | str | None) -> None:
    """Exit with `code` once stdout and stderr are flushed, skipping the interpreter's
    teardown: with torch loaded it takes about 0.4 s, a third of `gptcli generate -n 1`
    (docs/benchmarks.md, "Start-up"). Every file gptcli writes is complete and renamed
    by then, and gptcli registers no exit handlers; under torchrun, or before torch was
    imported, the exit is the normal one."""
    if not isinstance(code, int):
        code = 0 if code is None else 1
    if "torch" not in sys.modules or "TORCHELASTIC_RUN_ID" in os.environ:
        sys.exit(code)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _is_usage_error(e: Exception) -> bool:
    """typer vendors click in new releases and uses click in old ones: match by shape."""
    return callable(getattr(e, "format_message", None)) and isinstance(getattr(e, "exit_code", None), int)


def _quiet_exit(code: int) -> None:
    """Exit without a second error when stdout's reader has gone or its disk is full."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
    except OSError as e:
        _silence_stdout()
        say(f"error: cannot write to stdout: {e.strerror or e}")
        code = code or 1
    except ValueError:  # stdout was closed by the command
        pass
    sys.exit(code)
