"""The references made from their definitions: docs/cli.md from the CLI's (every command,
argument and option with its help, default and range, as `--help` shows them), and
docs/run-folder.md's table of trainer_state.json from TrainState's fields.

    python -m gptcli.cli.clidoc > docs/cli.md
    python -m gptcli.cli.clidoc --trainer-state     # the table to paste into docs/run-folder.md

Tests compare both docs with `render()` and `trainer_state_table()`, so neither goes stale.
"""

from __future__ import annotations

import dataclasses
import sys

import typer
import typer.main

from gptcli.cli.app import app

HEADER = """# CLI reference

Every command, argument and option, with its default and allowed range. This file is
generated from the option definitions (`python -m gptcli.cli.clidoc > docs/cli.md`); a test
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


def trainer_state_table() -> str:
    """trainer_state.json's "trainer" object, field by field, from TrainState itself."""
    from gptcli.store.readers import schema_of
    from gptcli.trainer import TrainState

    rows = ["| field | type | meaning |", "|---|---|---|"]
    for f, (key, kind) in zip(dataclasses.fields(TrainState), schema_of(TrainState).items()):  # the checked schema
        kinds = kind if isinstance(kind, tuple) else (kind,)
        names = " or ".join("null" if k is None else k.__name__ for k in kinds)
        rows.append(f"| `{f.name}` | {names}{' (may be absent)' if key.endswith('?') else ''} | "
                    f"{_cell(f.metadata['help'])} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(trainer_state_table() if sys.argv[1:] == ["--trainer-state"] else render(), end="")
