"""docs/cli.md, made from the CLI's own definitions: every command, argument and option
with its help, default and range, as `--help` shows them.

    python -m gptcli.clidoc > docs/cli.md

A test compares docs/cli.md with `render()`, so the reference cannot go stale.
"""

from __future__ import annotations

import typer
import typer.main

from gptcli.cli import app

HEADER = """# CLI reference

Every command, argument and option, with its default and allowed range. This file is
generated from the option definitions (`python -m gptcli.clidoc > docs/cli.md`); a test
fails when it is stale. `gptcli COMMAND --help` shows the same text.

Settings that a preset changes list each preset's value (`preset: tiny 16, small 32`).
Exit codes and error messages: [errors.md](errors.md).
"""


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _row(param, ctx: typer.Context) -> str:
    """The option as `--help` shows it: names with metavar, then help with default and range."""
    names, help_text = param.get_help_record(ctx)
    return f"| `{_cell(names)}` | {_cell(help_text)} |"


def _commands(group, prefix: str, ctx: typer.Context):
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        sub = typer.Context(command, parent=ctx, info_name=name)
        if hasattr(command, "list_commands"):
            yield from _commands(command, f"{prefix} {name}", sub)
        else:
            yield f"{prefix} {name}", command, sub


def render() -> str:
    root = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="gptcli")
    out = [HEADER]
    out.append("## gptcli\n")
    out.append(_cell(root.help or "") + "\n")
    out.append("| option | meaning |\n|---|---|")
    out += [_row(p, ctx) for p in root.params if p.get_help_record(ctx) is not None]
    out.append("")
    for path, command, cctx in _commands(root, "gptcli", ctx):
        out.append(f"## {path}\n")
        out.append(" ".join((command.help or "").split()) + "\n")
        out.append(f"```\n{path} {' '.join(command.collect_usage_pieces(cctx))}\n```\n")
        rows = [_row(p, cctx) for p in command.params if p.name != "help" and p.get_help_record(cctx) is not None]
        out.append("| argument or option | meaning |\n|---|---|")
        out += rows
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
