"""Shell completion: what is offered after a flag (complete_from, complete_run), and
`--show-completion` / `--install-completion` for bash, zsh and fish.

Typer writes the scripts; installing them is done here, under gptcli's output rules
rather than Typer's own installer, which wrote through a link at the script's place and
hung on a FIFO as ~/.bashrc. The script is written atomically, never through a link or
into a device or FIFO; the shell's start-up file must be a regular file (a link to one is
fine: dotfiles are often linked) and gains its one line only once, after the script is
in place. Imports nothing heavy: completion runs gptcli on every Tab.
"""

from __future__ import annotations

import os
import stat
import typing
from pathlib import Path

from gptcli.errors import UsageError

PROG, COMPLETE_VAR = "gptcli", "_GPTCLI_COMPLETE"
# where each shell looks for it, and the line its start-up file needs (the places Typer uses)
SHELLS = {
    "bash": (".bash_completions/gptcli.sh", ".bashrc", "source '{script}'"),
    "zsh": (".zfunc/_gptcli", ".zshrc", "fpath+=~/.zfunc; autoload -Uz compinit; compinit"),
    "fish": (".config/fish/completions/gptcli.fish", None, None),
}


# What they return is all the shell gets; none, and bash completes file names.
def complete_from(values) -> typing.Callable[[str], list[str]]:
    """Complete from a fixed set of values, such as a setting's choices."""
    return lambda incomplete: [v for v in values if v.startswith(incomplete)]


def complete_run(incomplete: str) -> list[str]:
    """Run folders under ./checkpoints (those with a config.json), by name; a name with a
    newline in it would reach the shell as two."""
    runs = Path("checkpoints")
    try:
        found = sorted(str(p) for p in runs.iterdir() if "\n" not in p.name and (p / "config.json").is_file())
    except OSError:
        return []
    return [r for r in found if r.startswith(incomplete)]


def register() -> None:
    """Let Click answer a Tab with Typer's shell formats (Typer does this itself only when
    it adds its own completion options, which gptcli replaces)."""
    from typer._completion_classes import completion_init

    completion_init()


def shell_name() -> str:
    """The shell gptcli runs under (its parent process, else $SHELL), if one it supports."""
    name = None
    try:
        import shellingham

        name = shellingham.detect_shell()[0]
    except Exception:  # not installed, or no shell among the parents
        name = Path(os.environ.get("SHELL", "")).name or None
    if name not in SHELLS:
        raise UsageError(f"completion is for {', '.join(SHELLS)}; this shell is {name or 'unknown'}: run it from "
                         "one of them")
    return name


def script(shell: str) -> str:
    from typer._completion_shared import get_completion_script

    return get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell)


def install(shell: str) -> Path:
    """Write the shell's completion script under $HOME and source it from its start-up
    file; returns the script's path."""
    from gptcli.store import atomic, folders

    home = Path.home()
    if not home.is_dir():
        raise UsageError(f"the home folder {home} is not a folder: set HOME to one")
    where, rc_name, rc_line = SHELLS[shell]
    target = home / where
    rc = home / rc_name if rc_name else None
    if rc is not None and rc.exists() and not stat.S_ISREG(os.stat(rc).st_mode):
        raise UsageError(f"{rc} is not a regular file: completion would append a line to it")
    folders.check_file_out(target, "the completion script", overwrite=True)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(target, script(shell) + "\n")
        if rc is not None:
            line = rc_line.format(script=target)
            text = rc.read_text(encoding="utf-8", errors="replace") if rc.exists() else ""
            if line not in text.splitlines():
                with open(rc, "a", encoding="utf-8") as f:
                    f.write(("\n" if text and not text.endswith("\n") else "") + line + "\n")
    except OSError as e:
        raise UsageError(f"cannot install completion in {home}: {e.strerror or e}") from None
    return target


# The options' callbacks (cli/app.py): each acts and ends the program, as --version does.
def show_option(value: bool) -> None:
    if value:
        print(script(shell_name()))
        raise _exit()


def install_option(value: bool) -> None:
    if value:
        from gptcli.console import say

        shell = shell_name()
        say(f"{shell} completion installed in {install(shell)}: it takes effect in a new shell")
        raise _exit()


def _exit():
    import typer

    return typer.Exit()
