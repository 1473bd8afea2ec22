"""Run folders: save and load them atomically, and validate what is loaded.

A run folder is self-contained:
    config.json         model config, tokenizer summary, training summary
    model.safetensors   the weights to use (best validation loss; tied matrix stored once)
    tokenizer.json      a copy of the tokenizer
    metrics.jsonl       one record per log line and evaluation
    resume/             latest weights, optimizer tensors (safetensors), trainer_state.json
Nothing here reads or writes pickle. `resume/` is staged in a temp folder and swapped in
by rename, so its three files always belong to the same step. A checkpoint writes
resume/ before model.safetensors and config.json: a kill between them leaves resume/
ahead, and it holds all it takes to catch the others up (see restore_best).
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from gptcli import atomic
from gptcli.config import ModelConfig, model_config_from_dict, to_dict
from gptcli.errors import RunError, UsageError
from gptcli.model import GPT
from gptcli.tokenizer import TOKENIZER_FILE, BPETokenizer

FORMAT = "gptcli-run"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, METRICS, RESUME = "config.json", "model.safetensors", "metrics.jsonl", "resume"
OPTIMIZER, TRAINER_STATE = "optimizer.safetensors", "trainer_state.json"
TIED = "lm_head.weight"  # the same tensor as wte.weight; stored once


# -- weights -----------------------------------------------------------------------


def weights_dict(model: GPT) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if k != TIED}


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors' save_file, with its I/O failures (a full disk, a file-size limit) raised
    as the OSError they are: the library reports them as SafetensorError("... (os error 28)"),
    which the callers' one error path for failed writes would otherwise miss."""
    try:
        # One metadata key only: safetensors writes the map in no fixed order, and the
        # same weights should give the same bytes.
        save_file(tensors, str(path), metadata={"format": "pt"})
    except SafetensorError as e:
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None


def save_weights(path: Path, model: GPT) -> None:
    with atomic.atomic_path(path) as tmp:
        save_tensors(weights_dict(model), tmp)


def _sniff_pickle(path: Path) -> bool:
    """True for a pickle (protocol 2+) or torch's zip format. A safetensors file starts
    with its header length (8 bytes, any value) and then '{', so check that first."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        return False
    return head[:1] == b"\x80" or head[:4] == b"PK\x03\x04"


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, with a clear error for anything else."""
    if not path.is_file():
        raise UsageError(f"missing {path.name} in {path.parent}")
    if _sniff_pickle(path):
        raise UsageError(f"{path} is a pickle (PyTorch .bin/.pt), not safetensors: gptcli never unpickles files")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError, a truncated file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path} is not a valid safetensors file ({msg})") from None


def check_tensors(model: GPT, tensors: dict[str, torch.Tensor], path: Path, against: str = CONFIG) -> None:
    """Names, shapes and dtypes of `tensors` against the model its config describes, and
    that every value is finite."""
    expected = {k: v for k, v in model.state_dict().items() if k != TIED}
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        parts = ([f"missing {', '.join(missing[:3])}"] if missing else []) + ([f"unexpected {', '.join(extra[:3])}"] if extra else [])
        raise UsageError(f"{path} does not match {against}: {'; '.join(parts)}")
    for name, want in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(want.shape):
            raise UsageError(f"{path} does not match {against}: {name} has shape {tuple(got.shape)}, "
                             f"{against} implies {tuple(want.shape)}")
        if not got.is_floating_point():
            raise UsageError(f"{path}: {name} has dtype {got.dtype}, expected a float type")
        if not bool(torch.isfinite(got).all()):  # a diverged or damaged model: generation would print garbage
            raise UsageError(f"{path}: {name} holds NaN or infinite values")


def load_weights(model: GPT, path: Path) -> None:
    """Load and check names, shapes and dtypes against the model built from config.json."""
    tensors = read_tensors(path)
    check_tensors(model, tensors, path)
    model.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()}, strict=False)
    model.lm_head.weight = model.wte.weight  # keep the tie after loading


# -- config ------------------------------------------------------------------------


def write_config(run: Path, model_cfg: ModelConfig, tok: BPETokenizer, training: dict) -> None:
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": to_dict(model_cfg),
           "tokenizer": tok.summary(), "training": training}
    atomic.write_text(run / CONFIG, json.dumps(doc, indent=2) + "\n")


def read_json(path: Path) -> object:
    """A JSON file someone may have edited or cut short: a clear error, not a traceback."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is not valid JSON ({e})") from None


def read_config(run: Path) -> dict:
    path = run / CONFIG
    if not run.is_dir():
        raise UsageError(f"{run}: no such run folder" if not run.exists() else f"{run} is not a folder")
    if not path.is_file():
        raise UsageError(f"{run} is not a gptcli run folder (no {CONFIG})")
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("model"), dict):
        raise UsageError(f"{path} is not a gptcli run config")
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise UsageError(f"{run} was written by a newer gptcli (format {doc['format_version']}); upgrade gptcli")
    return doc


WORKSPACE = Path("checkpoints")
SHIPPED = Path(__file__).resolve().parent / "assets" / "default"  # package data: works from any install


def resolve_run(given: Path | None, note: Callable[[str], None]) -> Path:
    """--checkpoint if given, else the newest run under ./checkpoints/, else the model
    shipped with gptcli."""
    if given is not None:
        return given
    runs = [d for d in WORKSPACE.glob("*") if (d / CONFIG).is_file() and (d / WEIGHTS).is_file()]
    if runs:
        newest = max(runs, key=lambda d: (d / WEIGHTS).stat().st_mtime)
        note(f"model: {newest} (the newest run under {WORKSPACE}/)")
        return newest
    if (SHIPPED / WEIGHTS).is_file():
        note("model: the default model shipped with gptcli (trained on tinyshakespeare); pass -c DIR for another")
        return SHIPPED
    raise UsageError("no model found: pass --checkpoint DIR, or train one with `gptcli train`")


def is_run(run: Path) -> bool:
    try:
        read_config(run)
        return True
    except UsageError:
        return False


def load_run(run: Path | str, device: torch.device | str = "cpu") -> tuple[GPT, BPETokenizer, dict]:
    """Load a run folder's model (in eval mode) and tokenizer, checking they agree."""
    run = Path(run)
    doc = read_config(run)
    model_cfg = model_config_from_dict(doc["model"])
    tok = BPETokenizer.load(run / TOKENIZER_FILE)
    check_tokenizer(tok, model_cfg, doc, run)
    model = GPT(model_cfg)
    load_weights(model, run / WEIGHTS)
    return model.to(device).eval(), tok, doc


def check_tokenizer(tok: BPETokenizer, model_cfg: ModelConfig, doc: dict, run: Path) -> None:
    if tok.vocab_size != model_cfg.vocab_size:
        raise UsageError(f"{run}: tokenizer.json has {tok.vocab_size} tokens but the model has {model_cfg.vocab_size}: "
                         "the tokenizer belongs to another run")
    recorded = (doc.get("tokenizer") or {}).get("sha256")
    if recorded and recorded != tok.sha256:
        raise UsageError(f"{run}: tokenizer.json is not the one this model was trained with (its hash differs)")


# -- resume state ------------------------------------------------------------------


def save_resume(run: Path, model: GPT, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Stage latest weights, optimizer tensors and trainer state together, then swap."""
    opt = optimizer.state_dict()
    tensors = {f"{idx}.{name}": t.detach().contiguous().cpu()
               for idx, slots in opt["state"].items() for name, t in slots.items()}
    state = {**state, "optimizer_groups": opt["param_groups"]}
    try:
        staging = Path(tempfile.mkdtemp(prefix=".resume.", dir=run))
        staging.chmod(0o755)
    except OSError as e:
        raise RunError(f"cannot write to {run}: {e.strerror or e}") from None
    try:
        save_weights(staging / WEIGHTS, model)
        with atomic.atomic_path(staging / OPTIMIZER) as tmp:
            save_tensors(tensors, tmp)
        atomic.write_text(staging / TRAINER_STATE, json.dumps(state))
        final, old = run / RESUME, run / (RESUME + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        staging.rename(final)
        atomic.fsync_dir(run)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise RunError(f"could not write the checkpoint in {run}: {e.strerror or e}") from None
    except RunError as e:  # a failed write inside the staging folder: name the file users know
        raise RunError(str(e).replace(str(staging), str(run / RESUME))) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def clean_stale(run: Path) -> None:
    """Remove temp files and staged folders a killed writer left (call with the lock held)."""
    for path in list(run.glob(".*.tmp")) + list(run.glob(f"{RESUME}*/.*.tmp")):
        path.unlink(missing_ok=True)
    for path in run.glob(f".{RESUME}.*"):
        shutil.rmtree(path, ignore_errors=True)


def resume_dir(run: Path) -> Path:
    """resume/, or resume.old/ if a crash fell between the two renames of a swap."""
    for name in (RESUME, RESUME + ".old"):
        if (run / name / TRAINER_STATE).is_file():
            return run / name
    raise UsageError(f"{run} has no resume state (no {RESUME}/{TRAINER_STATE}): it cannot be resumed")


def restore_best(run: Path) -> bool:
    """Copy resume/'s weights to model.safetensors unless they are already the same bytes.
    For a resume whose last checkpoint was a new best: those weights are the best, and a
    kill may have fallen before they reached model.safetensors. True if it copied."""
    source, target = resume_dir(run) / WEIGHTS, run / WEIGHTS
    if target.is_file() and filecmp.cmp(source, target, shallow=False):
        return False
    with atomic.atomic_path(target) as tmp:  # a failed copy is a RunError there
        shutil.copyfile(source, tmp)
    return True


def load_resume(run: Path, model: GPT, optimizer: torch.optim.Optimizer) -> dict:
    folder = resume_dir(run)
    try:
        state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UsageError(f"{folder / TRAINER_STATE} is unreadable ({e})") from None
    load_weights(model, folder / WEIGHTS)
    tensors = read_tensors(folder / OPTIMIZER)
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        idx, name = key.split(".", 1)
        slots.setdefault(int(idx), {})[name] = t
    try:
        optimizer.load_state_dict({"state": slots, "param_groups": state.pop("optimizer_groups")})
    except (KeyError, ValueError, RuntimeError) as e:
        raise UsageError(f"{folder} optimizer state does not fit the model ({e})") from None
    return state


LOCK = ".lock"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # a stale lock whose pid happens to be ours
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_owner(run: Path) -> int | None:
    """The pid of a live process holding the run's lock, if any."""
    try:
        pid = int((run / LOCK).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid and _pid_alive(pid) else None


@contextlib.contextmanager
def run_lock(run: Path, warn: Callable[[str], None]):
    """Hold `.lock` (our pid) while writing a run folder. A second writer is refused; a
    lock left behind by a killed run is taken over with a warning."""
    path = run / LOCK
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            owner = lock_owner(run)
            if owner is not None:
                raise UsageError(f"{run} is being written by another gptcli process (pid {owner}): "
                                 "wait for it or stop it") from None
            warn(f"{run}: taking over the lock of a run that was killed")
            path.unlink(missing_ok=True)
        except OSError as e:
            raise RunError(f"cannot lock {run}: {e.strerror or e}") from None
    else:
        raise RunError(f"cannot lock {run}: another process keeps taking the lock")
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def append_metrics(run: Path, record: dict) -> None:
    with open(run / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run: Path) -> list[dict]:
    """Records of metrics.jsonl; a line cut short by a crash is skipped."""
    out = []
    path = run / METRICS
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def write_tokenizer(run: Path, tok: BPETokenizer) -> None:
    tok.save(run / TOKENIZER_FILE)


def count_params(path: Path) -> int:
    """Parameters stored in a safetensors file, read from its header alone."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    total = 0
    for name, meta in header.items():
        if name != "__metadata__":
            size = 1
            for dim in meta["shape"]:
                size *= dim
            total += size
    return total


def describe(run: Path) -> dict:
    """What `gptcli info` shows: config, parameter count, training summary."""
    doc = read_config(run)
    model_config_from_dict(doc["model"])
    weights = run / WEIGHTS
    if not weights.is_file():
        raise UsageError(f"{run} has no {WEIGHTS}")
    if _sniff_pickle(weights):
        raise UsageError(f"{weights} is a pickle, not safetensors: gptcli never unpickles files")
    try:
        params = count_params(weights)
    except (OSError, ValueError, KeyError, TypeError):
        raise UsageError(f"{weights} is not a valid safetensors file") from None
    try:
        resume_dir(run)
        resumable = True
    except UsageError:
        resumable = False
    return {"run": str(run), "params": params, "model": doc["model"], "tokenizer": doc.get("tokenizer", {}),
            "training": doc.get("training", {}), "resumable": resumable}
