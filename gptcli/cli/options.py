"""Typer options made from the settings' definitions in config.py.

Each setting's flag, help text, default and range are written once, in its dataclass
field; `settings_options` turns them into options of a Typer command, so `--help`,
docs/cli.md and the checks agree by construction. The options several commands share
(--checkpoint, --prompt, --threads, ...) are defined here once too. `flag` names a
setting as the user types it, for messages. Imports nothing heavy.
"""

from __future__ import annotations

import functools
import inspect
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from gptcli.cli.completion import complete_from, complete_run
from gptcli.config import PRESETS, ModelConfig, TrainConfig
from gptcli.errors import Setting, SettingError, UsageError
from gptcli.settings import Spec, allowed, base_type, specs

PRESET_SECTION = {ModelConfig: "model", TrainConfig: "train"}


# Options several commands share, defined once.
Checkpoint = Annotated[Optional[Path], typer.Option(
    "--checkpoint", "-c", help="Run folder [default: the newest under ./checkpoints/, else the shipped model].",
    show_default=False, autocompletion=complete_run)]
Json = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing OUT of the same kind.")]
TokenizerPath = Annotated[Optional[Path], typer.Option(
    "--tokenizer", help="tokenizer.json, its folder, or a run folder [default: ./tokenizer/].", show_default=False)]
Threads = Annotated[Optional[int], typer.Option(
    "--threads", help="CPU threads to compute with [default: torch's, one per core this process may use].",
    metavar="N", show_default=False)]
TextField = Annotated[Optional[str], typer.Option(
    "--text-field", help="The field of JSON lines or Parquet records that holds the text; with it, stdin is read "
    "as JSON lines [default: text].", metavar="NAME", show_default=False)]
CORPUS_HELP = ("Text, JSON lines (.jsonl) or Parquet files, also .gz, .zst or .xz compressed; folders (searched "
               "recursively); or - for stdin.")
Prompt = Annotated[Optional[str], typer.Option(
    "--prompt", "-p", help="The prompt; - reads it from stdin. Without it, piped stdin is the prompt.",
    show_default=False)]


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _default_text(cls: type, name: str) -> str:
    value, text = cls.__dataclass_fields__[name].default, specs(cls)[name][1].default_text
    return text if value is None and text else _fmt(value)


def _preset_value(chosen: dict, section: str, name: str, cls: type) -> str:
    """A preset's value for a setting, with its Muon value first where it has one."""
    plain = _fmt(chosen[section][name]) if name in chosen[section] else _default_text(cls, name)
    if name not in chosen.get("muon", {}):
        return plain
    if name == "optimizer":
        return "muon for a new GPT (train)"
    return f"{_fmt(chosen['muon'][name])} with muon, else {plain}"


def help_text(cls: type, name: str) -> str:
    """The setting's help, its default (per preset where presets set it) and its range."""
    kind, spec = specs(cls)[name]
    base = base_type(kind)
    section = PRESET_SECTION.get(cls)
    per_preset = [(p, _preset_value(v, section, name, cls)) for p, v in PRESETS.items()
                  if section and (name in v[section] or name in v.get("muon", {}))]
    if per_preset:
        default = "preset: " + ", ".join(f"{p} {v}" for p, v in per_preset)
        if len(per_preset) < len(PRESETS):  # the presets that leave it alone take the default
            default += f"; others {_default_text(cls, name)}"
    elif spec.default_text is not None:
        default = f"default: {spec.default_text}"
    else:
        value = cls.__dataclass_fields__[name].default
        default = f"default: {_fmt(value)}" if value not in (None, ()) else ""
    limits = ""  # choices show in the metavar; a duration's range is in seconds, not what users type
    if base in (int, float) and spec.parse is None and (spec.low is not None or spec.high is not None):
        limits = f"; {allowed(spec, base is int)}"
    tail = f"[{default}{limits}]" if default else f"[{limits[2:]}]" if limits else ""
    return f"{spec.help} {tail}".strip()


def _option(cls: type, name: str, kind: object, spec: Spec) -> object:
    base = base_type(kind)
    decls = [spec.flag or "--" + name.replace("_", "-")] + ([spec.short] if spec.short else [])
    if spec.parse is not None:
        base = str
    elif typing.get_origin(base) is tuple:
        base = list[str]
    metavar = spec.metavar or ("[" + "|".join(spec.choices) + "]" if spec.choices else None)
    info = typer.Option(*decls, help=help_text(cls, name), show_default=False, metavar=metavar,
                        autocompletion=complete_from(spec.choices) if spec.choices else None)
    return Annotated[Optional[base], info]  # noqa: UP045 (typer reads the annotation at run time)


def _parsed(name: str, spec: Spec, value: object) -> object:
    """A value as typed -> the setting's value: durations parsed, repeated options a tuple."""
    if spec.parse is not None:
        try:
            return spec.parse(value)
        except (UsageError, ValueError) as e:
            raise SettingError(Setting(name), f": {e}") from None
    return tuple(value) if isinstance(value, list) else value


def settings_options(*classes: type, only: tuple[str, ...] = (), exclude: tuple[str, ...] = (),
                     last: tuple[str, ...] = ("json_out", "quiet")):
    """Decorator: one option per setting of `classes` that has a flag (only those named in
    `only`, none named in `exclude`), listed after the command's own parameters but before
    those named in `last`. The command receives `settings`, a dict of the settings the
    user gave, parsed (durations) and typed."""
    chosen = [(cls, name, kind, spec) for cls in classes for name, (kind, spec) in specs(cls).items()
              if spec.flag != "" and (not only or name in only) and name not in exclude]

    def decorate(func):
        sig = inspect.signature(func, eval_str=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values() if p.name != "settings"]
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                                   annotation=_option(cls, name, kind, spec)) for cls, name, kind, spec in chosen]
        at = next((i for i, p in enumerate(own) if p.name in last), len(own))

        @functools.wraps(func)
        def command(**kwargs):
            settings = {}
            for _, name, _, spec in chosen:
                value = kwargs.pop(name)
                if value is not None:
                    settings[name] = _parsed(name, spec, value)
            return func(**kwargs, settings=settings)

        command.__signature__ = sig.replace(parameters=own[:at] + extra + own[at:])
        return command

    return decorate
