"""Weights on disk: safetensors files written atomically, read without unpickling, and
checked against the model a config describes before they are used.

The tied lm_head is stored once (as wte.weight) and re-tied on load. Knows nothing of
run folders or Hugging Face names (checkpoint.py and hf_weights.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gptcli.architectures import LanguageModel
from gptcli.errors import UsageError, first_line
from gptcli.store import atomic
from gptcli.store.readers import TensorInfo, read_header

TIED = "lm_head.weight"  # the same tensor as wte.weight; stored once
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def weights_dict(model: LanguageModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != TIED}


@contextlib.contextmanager
def library_path(path: Path) -> Iterator[str]:
    """A name safetensors can open for `path`. Its Rust side takes only UTF-8 names, so a
    folder created with other bytes was refused as "not valid UTF-8", which surfaced as
    "an invalid safetensors file". Such a folder is opened here, by its bytes, and the
    library given the file's name under the descriptor's /proc/self/fd link: the temp file
    safetensors writes beside its target lands in the real folder. Where the OS has no
    /proc/self/fd, the path is refused with one line that says why."""
    name = os.fspath(path)
    if _is_utf8(name):
        yield name
        return
    if not os.path.isdir("/proc/self/fd"):
        raise UsageError(f"{path}: the path is not valid UTF-8, and safetensors cannot open such a path on this "
                         "system: rename it")
    opened, leaf = (path.parent, path.name) if _is_utf8(path.name) else (path, "")
    try:
        fd = os.open(opened, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"cannot open {opened}: {e.strerror or e}") from None
    try:
        yield f"/proc/self/fd/{fd}/{leaf}" if leaf else f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes, held as lone surrogates
        return False


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' save_file, with its I/O failures (a full disk, a file-size limit) raised
    as the OSError they are: the library reports them as SafetensorError("... (os error 28)"),
    which the callers' one error path for failed writes would otherwise miss. The file
    follows the umask: safetensors renames its own 0600 temp file into place."""
    try:
        # One metadata key only: safetensors writes the map in no fixed order, and the
        # same weights should give the same bytes.
        with library_path(path) as name:
            save_file(tensors, name, metadata={"format": "pt"})
        os.chmod(path, 0o666 & ~atomic.umask())
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None


def save_weights(path: Path, model: LanguageModel) -> None:
    with atomic.atomic_path(path) as tmp:
        save_tensors(weights_dict(model), tmp)


def is_pickle(path: Path) -> bool:
    """True for a pickle (protocol 2+) or torch's zip format. A safetensors file starts
    with its header length (8 bytes, any value) and then '{', so check that first."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        return False
    return head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"


def read_tensors(path: Path, expected: dict[str, tuple[int, ...]] | None = None,
                 against: str = "config.json") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file. The header is checked first, against the file's
    size and against the `expected` names and shapes, so nothing is read or allocated for
    a file that does not fit; then every value must be finite."""
    if not path.is_file():
        raise UsageError(f"missing {path.name} in {path.parent}")
    if is_pickle(path):
        raise UsageError(f"{path} is a pickle (PyTorch .bin/.pt), not safetensors: gptcli never unpickles files")
    header = read_header(path)
    if expected is not None:
        check_header(header, expected, path, against)
    try:
        with library_path(path) as name, safe_open(name, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except UsageError:
        raise
    except Exception as e:  # SafetensorError, OSError, a file changed under us
        raise UsageError(f"{path} is not a valid safetensors file ({first_line(e)})") from None
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):  # a diverged or damaged model
            raise UsageError(f"{path}: {name} holds NaN or infinite values")
    return tensors


def expected_shapes(model: LanguageModel) -> dict[str, tuple[int, ...]]:
    """The names and shapes a file of this model's weights must hold."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if k != TIED}


def check_header(header: dict[str, TensorInfo], expected: dict[str, tuple[int, ...]], path: Path,
                  against: str) -> None:
    missing, extra = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + \
                ([f"unexpected {', '.join(extra[:3])}"] if extra else [])
        raise UsageError(f"{path} does not match {against}: {'; '.join(parts)}")
    for name, shape in expected.items():
        got = header[name]
        if got.shape != shape:
            raise UsageError(f"{path} does not match {against}: {name} has shape {got.shape}, "
                             f"{against} implies {shape}")
        if got.dtype not in FLOAT_DTYPES:
            raise UsageError(f"{path}: {name} has dtype {got.dtype}, expected a float type")


def load_state(model: LanguageModel, tensors: dict[str, torch.Tensor]) -> None:
    """Copy checked tensors into the model (as float32) and keep lm_head tied."""
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=False)
    model.lm_head.weight = model.wte.weight


def load_weights(model: LanguageModel, path: Path, against: str = "config.json") -> None:
    """Read, checked against the model built from the config, and load."""
    load_state(model, read_tensors(path, expected_shapes(model), against))


def count_params(path: Path) -> int:
    """Parameters stored in a safetensors file, read from its checked header alone."""
    if is_pickle(path):
        raise UsageError(f"{path} is a pickle, not safetensors: gptcli never unpickles files")
    return sum(math.prod(info.shape) for info in read_header(path).values())
