"""Strict readers for the files gptcli loads: bounded size and nesting, exact types, and
safetensors headers checked against the file before any tensor is read.

Every file a user hands in (or could have edited) goes through one of these: JSON
documents (`read_json` + `expect`), JSON lines (`read_jsonl`) and safetensors headers
(`read_header`). A file that does not fit is a UsageError naming the file and the field.
Knows nothing of what the documents mean; their schemas live with their owners.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gptcli.errors import UsageError, first_line, printable

MAX_JSON_BYTES = 64 << 20  # a config or trainer state is a few KB; anything this large is not one
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on a header
MAX_LINE_BYTES = 1 << 20  # a metrics record is a few hundred bytes
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
               "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def read_json(path: Path, max_bytes: int = MAX_JSON_BYTES) -> object:
    """A JSON document someone may have edited, cut short, or made hostile."""
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise UsageError(f"{path} is {size:,} bytes, too large for what it should hold (at most {max_bytes:,})")
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise UsageError(f"{path} is not valid JSON (nested too deeply)") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is not valid JSON ({first_line(e)})") from None


def iter_jsonl(path: Path, max_line: int = MAX_LINE_BYTES) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) for each line, streamed: memory is one line's, however
    long the file (a metrics.jsonl grows for as long as a run trains). Only a last line
    cut short (a crash while appending) may be dropped; any other line that is not a JSON
    object, or is longer than `max_line` bytes, is an error."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UsageError(f"{path} is unreadable ({first_line(e)})") from None
    with f:
        n = 0
        while True:
            try:
                line = f.readline(max_line + 1)
            except OSError as e:
                raise UsageError(f"{path} is unreadable ({first_line(e)})") from None
            if not line:
                return
            n += 1
            if len(line) > max_line:
                raise UsageError(f"{path} line {n} is longer than {max_line:,} bytes: the file was edited or damaged")
            if not line.endswith(b"\n"):
                return  # the text after the last newline was cut short
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
                record = None
            if not isinstance(record, dict):
                raise UsageError(f"{path} line {n} is not a JSON object: the file was edited or damaged")
            yield n, record


def read_jsonl(path: Path) -> list[dict]:
    """iter_jsonl's objects, as a list: for files that stay small."""
    return [record for _, record in iter_jsonl(path)]


def dumps(value: object, indent: int | None = None) -> str:
    """JSON text that is always valid UTF-8 JSON, for stdout: NaN and infinities become
    null (JSON has neither), and text that cannot be UTF-8 (a path's undecodable bytes,
    held as lone surrogates) has those bytes written as \\xNN escapes."""
    return json.dumps(_strict(value), indent=indent, ensure_ascii=False, allow_nan=False)


def _strict(value: object) -> object:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_strict(k): _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def schema_of(cls: type) -> dict:
    """The schema (`expect`) of a dataclass as dataclasses.asdict saves it: each field's
    type, `X | None` as (X, None); a field whose metadata says optional may be absent."""
    hints = typing.get_type_hints(cls)
    schema = {}
    for f in dataclasses.fields(cls):
        args = typing.get_args(hints[f.name])
        kind = tuple(None if a is type(None) else a for a in args) if args else hints[f.name]
        schema[f.name + ("?" if f.metadata.get("optional") else "")] = kind
    return schema


def expect(value: object, schema: object, where: str) -> None:
    """`value` against a schema: a type (int means an int, not a bool or 2.0; float means a
    finite number), None, a tuple of alternatives, [schema] for a list of them, or
    {key: schema} for an object holding at least those keys ("key?" when it may be absent)."""
    if isinstance(schema, tuple):
        errors = []
        for option in schema:
            try:
                expect(value, option, where)
                return
            except UsageError as e:
                errors.append(e)
        raise errors[0]
    if schema is None:
        ok = value is None
    elif schema is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif schema is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif isinstance(schema, type):
        ok = isinstance(value, schema)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            raise UsageError(f"{where} must be a list, got {_kind(value)}")
        for i, item in enumerate(value):
            expect(item, schema[0], f"{where}[{i}]")
        return
    else:
        if not isinstance(value, dict):
            raise UsageError(f"{where} must be an object, got {_kind(value)}")
        for key, sub in schema.items():
            optional, key = key.endswith("?"), key.rstrip("?")
            if key in value:
                expect(value[key], sub, f"{where}.{key}")
            elif not optional:
                raise UsageError(f"{where} has no {key!r}")
        return
    if not ok:
        raise UsageError(f"{where} must be {_name(schema)}, got {_kind(value)}")


def _name(schema: object) -> str:
    return {int: "an integer", float: "a number", str: "text", bool: "true or false", dict: "an object",
            list: "a list"}.get(schema, "null" if schema is None else getattr(schema, "__name__", str(schema)))


def _kind(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (int, float, str, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors' name: F32, BF16, ...
    shape: tuple[int, ...]


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors a safetensors file declares, checked against the file's size: a header
    that claims more bytes than the file holds, or offsets that overlap or leave gaps, is
    refused before anything is allocated."""

    def bad(why: str) -> UsageError:
        return UsageError(f"{path} is not a valid safetensors file ({why})")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(size - 8, MAX_HEADER_BYTES):
                raise bad(f"its header claims {n:,} bytes, the file has {size:,}")
            header = json.loads(f.read(n))
    except (OSError, ValueError, RecursionError) as e:
        raise bad(first_line(e)) from None
    if not isinstance(header, dict):
        raise bad("its header is not an object")
    data, spans, out = size - 8 - n, [], {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            expect(meta, {"dtype": str, "shape": [int], "data_offsets": [int]}, f"tensor {name}")
        except UsageError as e:
            raise bad(str(e)) from None
        if meta["dtype"] not in DTYPE_BYTES or any(d < 0 for d in meta["shape"]) or len(meta["data_offsets"]) != 2:
            raise bad(f"tensor {name} has a bad dtype, shape or offsets")
        begin, end = meta["data_offsets"]
        if not 0 <= begin <= end <= data or end - begin != math.prod(meta["shape"]) * DTYPE_BYTES[meta["dtype"]]:
            raise bad(f"tensor {name} claims bytes {begin:,}..{end:,}, which the file does not hold")
        spans.append((begin, end))
        out[name] = TensorInfo(meta["dtype"], tuple(meta["shape"]))
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            raise bad("its tensors overlap or leave gaps")
        position = end
    if position != data:
        raise bad(f"{data - position:,} bytes belong to no tensor")
    return out
