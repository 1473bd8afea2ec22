"""The machinery behind a setting: one definition in a dataclass field (`setting(...)`:
type, default, help text, allowed range) that the CLI's options, docs/cli.md and the
checks all read. `check` validates an instance against its definitions, whether its
values came from flags or a file; messages name the setting (`n_embd`) and the caller
names it as the user wrote it (errors.SettingError). The settings themselves live in
config.py. Imports nothing heavy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gptcli.errors import Setting as S
from gptcli.errors import SettingError, UsageError


@dataclass(frozen=True)
class Spec:
    """What the CLI and the checks need to know about one setting."""

    help: str
    low: float | None = None  # smallest allowed value
    high: float | None = None  # largest allowed value
    open_low: bool = False  # `low` itself is not allowed
    open_high: bool = False
    choices: tuple[str, ...] = ()
    flag: str | None = None  # the CLI option when it is not --field-name; "" for none
    short: str | None = None  # a one-letter alias, e.g. -n
    default_text: str | None = None  # what the default means, when its value does not say it
    applies: str | None = None  # the one strategy this setting changes (sampling: "sample", beams: "beam")
    resumable: bool = False  # a training setting a resumed run may change (the others must match the run's)
    parse: Callable[[str], Any] | None = None  # for options given as text, e.g. durations
    show: Callable[[Any], str] | None = None  # and how such a value is written back
    metavar: str | None = None


def setting(default: Any, help: str, **spec: Any) -> Any:
    return field(default=default, metadata={"spec": Spec(help, **spec)})


def specs(cls: type) -> dict[str, tuple[Any, Spec]]:
    """Each field's (type, Spec) of a settings dataclass, in field order."""
    return _specs(cls)


@functools.cache
def _specs(cls: type) -> dict[str, tuple[Any, Spec]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.metadata["spec"]) for f in dataclasses.fields(cls) if "spec" in f.metadata}


def _number(x: float) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:g}"


def shown(spec: Spec, value: float) -> str:
    """A value as the user would write it: 1,024, 0.0, 1e-40, or 2h46m40s for a duration."""
    if spec.show is not None:
        return spec.show(value)
    return f"{value:,}" if isinstance(value, int) else repr(value)


def allowed(spec: Spec, is_int: bool) -> str:
    """'positive', '0 or more', 'between 1 and 1,024', 'in [0, 1)': the range in words."""
    if spec.show is not None:
        return f"at most {spec.show(spec.high)}" if spec.high is not None else "positive"
    lo, hi = spec.low, spec.high
    if hi is None:
        if lo == 0:
            return "positive" if spec.open_low else "0 or more"
        if is_int and lo == 1:
            return "positive"
        return f"greater than {_number(lo)}" if spec.open_low else f"at least {_number(lo)}"
    if lo is None:
        return f"at most {_number(hi)}"
    if is_int:
        return f"between {_number(lo)} and {_number(hi)}"
    return f"in {'(' if spec.open_low else '['}{_number(lo)}, {_number(hi)}{')' if spec.open_high else ']'}"


def base_type(kind: Any) -> Any:
    """int for `int | None`; the type itself otherwise."""
    args = typing.get_args(kind)
    return next(a for a in args if a is not type(None)) if type(None) in args else kind


def check_value(name: str, value: Any, kind: Any, spec: Spec) -> None:
    """One value against its type and range: exact types (2.0 is not an integer)."""
    optional, base = type(None) in typing.get_args(kind), base_type(kind)
    if value is None:
        if optional:
            return
        raise SettingError(S(name), f" must be set, got {value!r}")
    if base is bool:
        if not isinstance(value, bool):
            raise SettingError(S(name), f" must be true or false, got {value!r}")
        return
    if base is str:
        if not isinstance(value, str):
            raise SettingError(S(name), f" must be text, got {value!r}")
        if spec.choices and value not in spec.choices:
            raise SettingError(S(name), f" must be {_one_of(spec.choices)}, got {value!r}")
        return
    if typing.get_origin(base) is tuple:
        if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
            raise SettingError(S(name), f" must be a list of strings, got {value!r}")
        return
    is_int = base is int
    if isinstance(value, bool) or not isinstance(value, int if is_int else (int, float)):
        raise SettingError(S(name), f" must be {'an integer' if is_int else 'a number'}, got {value!r}")
    if not is_int and not math.isfinite(value):
        raise SettingError(S(name), f" must be a finite number, got {value}")
    too_low = spec.low is not None and (value <= spec.low if spec.open_low else value < spec.low)
    too_high = spec.high is not None and (value >= spec.high if spec.open_high else value > spec.high)
    if too_low or too_high:
        raise SettingError(S(name), f" must be {allowed(spec, is_int)}, got {shown(spec, value)}")


def _one_of(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + f" or {choices[-1]}" if len(choices) > 1 else choices[0]


def check(cfg: Any) -> None:
    """Every field of a settings dataclass against its definition."""
    for name, (kind, spec) in specs(type(cfg)).items():
        check_value(name, getattr(cfg, name), kind, spec)


_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([hms]?)")  # ASCII digits only: float() reads others too


def parse_duration(text: str) -> float:
    """'90' or '90s' -> 90.0, '10m' -> 600.0, '1h30m' -> 5400.0 (seconds)."""
    s = text
    pos, total, last = 0, 0.0, -1
    units = ("h", "m", "s")  # each at most once, in this order: 1h1h or 30m1h is a typo, not a sum
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
    while pos < len(s):
        m = _DURATION.match(s, pos)
        order = units.index(m.group(2)) if m and m.group(2) else len(units)
        if not m or (m.group(2) == "" and (m.end() != len(s) or pos > 0)) or order <= last:
            raise UsageError(f"cannot read duration {text!r}: use e.g. 90s, 10m, 1h or 1h30m")
        total += float(m.group(1)) * scale[m.group(2)]
        pos, last = m.end(), order
    if not s or not (total > 0 and math.isfinite(total)):
        raise UsageError(f"duration must be positive, got {text!r}")
    return total


def format_duration(seconds: float) -> str:
    """90 -> '1m30s', 5400 -> '1h30m00s': parse_duration reads it back."""
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def pick(cls: type, settings: dict) -> dict:
    """The entries of `settings` that are fields of `cls`."""
    return {k: v for k, v in settings.items() if k in cls.__dataclass_fields__}


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, d: object, where: str) -> Any:
    """A settings dataclass from a JSON object someone may have edited: unknown keys and
    wrong types are errors naming `where` and the key; missing keys take their defaults."""
    if not isinstance(d, dict):
        raise UsageError(f"{where} must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise UsageError(f"{where} has unknown fields: {', '.join(unknown)}")
    kinds = specs(cls)
    values = {k: tuple(v) if isinstance(v, list) and typing.get_origin(kinds[k][0]) is tuple else v
              for k, v in d.items()}
    try:
        cfg = cls(**values)
        cfg.validate()
    except SettingError as e:
        raise UsageError(f"{where}: {e.render()}") from None
    return cfg
