"""Run folders: save and load them atomically, and validate what is loaded.

A run folder is self-contained (docs/run-folder.md):
    config.json         model config, tokenizer summary, training summary
    model.safetensors   the weights to use (best validation loss; tied matrix stored once)
    tokenizer.json      a copy of the tokenizer
    metrics.jsonl       one record per log line and evaluation
    resume/             latest weights, optimizer tensors (safetensors), trainer_state.json
Nothing here reads or writes pickle. `resume/` is staged and swapped in whole, so its
three files always belong to the same step. A checkpoint writes resume/ before
model.safetensors and config.json: a kill between them leaves resume/ ahead, and it holds
all it takes to catch the others up (see restore_best).
"""

from __future__ import annotations

import filecmp
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from gptcli import workspace
from gptcli.architectures import LanguageModel, build
from gptcli.budget import check_model
from gptcli.config import ModelConfig
from gptcli.errors import UsageError, first_line
from gptcli.settings import from_dict, to_dict
from gptcli.store import atomic, folders, runlock
from gptcli.store.readers import expect, iter_jsonl, read_json, schema_of
from gptcli.store.weights import load_weights, read_tensors, save_tensors, save_weights
from gptcli.tokenizer import BPETokenizer
from gptcli.workspace import TOKENIZER_FILE

FORMAT = workspace.RUN_FORMAT
FORMAT_VERSION = 1
CONFIG, WEIGHTS, METRICS, RESUME = "config.json", "model.safetensors", "metrics.jsonl", "resume"
OPTIMIZER, TRAINER_STATE = "optimizer.safetensors", "trainer_state.json"
RESUME_OLD = "resume.old"  # where a swap keeps the last resume/ between its two renames

# What readers of config.json rely on; `model` and `training.config` are checked field by
# field against their settings (config.from_dict).
CONFIG_SCHEMA = {
    "format": str, "format_version": int, "model": dict,
    "tokenizer?": {"vocab_size?": int, "eot_id?": int, "sha256?": str},
    "training?": {"steps?": int, "tokens_seen?": int, "elapsed_sec?": float, "device?": str, "dtype?": str,
                  "preset?": str, "corpus?": [str], "corpus_digests?": [str], "val_paths?": [str],
                  "val_fraction?": (float, None), "init?": (str, None), "config?": dict, "params?": int,
                  "best_step?": (int, None), "best_val_loss?": (float, None), "best_val_bpb?": float,
                  "schedule_steps?": (int, None), "last_eval?": dict, "stop_reason?": str, "imported_from?": str},
}
_RANK_STATE = {  # one process's batch sampler and random-number generators
    "sampler": {"bit_generator": str, "state": {"state": int, "inc": int}, "has_uint32": int, "uinteger": int},
    "rng": {"python": list, "numpy": dict, "torch": str},
}


def trainer_state_schema() -> dict:
    """trainer_state.json's schema; its "trainer" object is trainer.TrainState's fields
    (imported here, not at load: generation never needs the trainer)."""
    from gptcli.trainer import TrainState

    return {
        "trainer": schema_of(TrainState),
        **_RANK_STATE,  # rank 0's (the only one without torchrun)
        "world_size?": int,
        "ranks?": [_RANK_STATE],  # under torchrun: every rank's, in rank order
        "optimizer_groups": [dict],
    }


# -- config ------------------------------------------------------------------------


def write_config(run: Path, model_cfg: ModelConfig, tok: BPETokenizer, training: dict) -> None:
    doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "model": to_dict(model_cfg),
           "tokenizer": tok.summary(), "training": training}
    atomic.write_text(run / CONFIG, json.dumps(doc, indent=2) + "\n")


def read_config(run: Path) -> dict:
    path = run / CONFIG
    if not run.is_dir():
        raise UsageError(f"{run}: no such run folder" if not run.exists() else f"{run} is not a folder")
    if not path.is_file():
        raise UsageError(f"{run} is not a gptcli run folder (no {CONFIG})")
    doc = read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise UsageError(f"{path} is not a gptcli run config")
    expect(doc, CONFIG_SCHEMA, str(path))
    if doc["format_version"] > FORMAT_VERSION:
        raise UsageError(f"{run} was written by a newer gptcli (format {doc['format_version']}); upgrade gptcli")
    return doc


def model_config(doc: dict, run: Path) -> ModelConfig:
    """The model section, checked field by field and against this machine's memory."""
    cfg = from_dict(ModelConfig, doc["model"], f"{run / CONFIG} model section")
    check_model(cfg, f"the model of {run}")
    return cfg


def is_run(run: Path) -> bool:
    try:
        read_config(run)
        return True
    except UsageError:
        return False


# -- loading -------------------------------------------------------------------------


def resolve_run(given: Path | None, note: Callable[[str], None]) -> Path:
    """--checkpoint if given, else the newest run under ./checkpoints/, else the model
    shipped with gptcli."""
    if given is not None:
        return given
    runs = [d for d in workspace.RUNS.glob("*") if (d / CONFIG).is_file() and (d / WEIGHTS).is_file()]
    if runs:
        newest = max(runs, key=lambda d: (d / WEIGHTS).stat().st_mtime)
        note(f"model: {newest} (the newest run under {workspace.RUNS}/)")
        return newest
    if (workspace.SHIPPED / WEIGHTS).is_file():
        note("model: the default model shipped with gptcli (trained on tinyshakespeare); pass -c DIR for another")
        return workspace.SHIPPED
    raise UsageError("no model found: pass --checkpoint DIR, or train one with `gptcli train`")


def load_run(run: Path | str, device: torch.device | str = "cpu") -> tuple[LanguageModel, BPETokenizer, dict]:
    """Load a run folder's model (in eval mode) and tokenizer, checking they agree."""
    run = Path(run)
    doc = read_config(run)
    model_cfg = model_config(doc, run)
    tok = BPETokenizer.load(run / TOKENIZER_FILE)
    check_tokenizer(tok, model_cfg, doc, run)
    model = build(model_cfg, init=False)  # every weight is loaded next
    load_weights(model, run / WEIGHTS)
    return model.to(device).eval(), tok, doc


def check_tokenizer(tok: BPETokenizer, model_cfg: ModelConfig, doc: dict, run: Path) -> None:
    if tok.vocab_size != model_cfg.vocab_size:
        raise UsageError(f"{run}: tokenizer.json has {tok.vocab_size} tokens but the model has {model_cfg.vocab_size}: "
                         "the tokenizer belongs to another run")
    recorded = (doc.get("tokenizer") or {}).get("sha256")
    if recorded and recorded != tok.sha256:
        raise UsageError(f"{run}: tokenizer.json is not the one this model was trained with (its hash differs)")


def write_tokenizer(run: Path, tok: BPETokenizer) -> None:
    tok.save(run / TOKENIZER_FILE)


# -- resume state ------------------------------------------------------------------


def save_resume(run: Path, model: LanguageModel, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Stage latest weights, optimizer tensors and trainer state together, then swap."""
    tensors, groups = optimizer_tensors(optimizer)
    state = {**state, "optimizer_groups": groups}
    with folders.staged(run / RESUME, old=run / RESUME_OLD) as stage:
        save_weights(stage / WEIGHTS, model)
        with atomic.atomic_path(stage / OPTIMIZER) as tmp:
            save_tensors(tensors, tmp)
        atomic.write_text(stage / TRAINER_STATE, json.dumps(state))


def clean_stale(run: Path) -> None:
    """Remove temp files and staged folders a killed writer left (call with the lock held)."""
    for path in list(run.glob(".*.tmp")) + list(run.glob(f"{RESUME}*/.*.tmp")):
        path.unlink(missing_ok=True)
    for path in run.glob(f".{RESUME}.*"):
        shutil.rmtree(path, ignore_errors=True)


def refuse_links(run: Path) -> None:
    """Refuse a run folder that gptcli would write through a symbolic link: its lock,
    resume/ (and the files in it), weights, config, tokenizer or metrics. Checked before a
    run folder is written in place, so nothing outside it is truncated, written or
    deleted through one."""
    members = [runlock.LOCK, RESUME, RESUME_OLD, WEIGHTS, CONFIG, TOKENIZER_FILE, METRICS]
    members += [f"{folder}/{name}" for folder in (RESUME, RESUME_OLD) for name in (WEIGHTS, OPTIMIZER, TRAINER_STATE)]
    for name in members:
        if (run / name).is_symlink():
            raise UsageError(f"{run / name} is a symbolic link: gptcli writes no run folder through a link "
                             "(replace it with the file or folder itself)")


def resume_dir(run: Path) -> Path:
    """resume/, or the old one if a crash fell between the two renames of a swap."""
    for folder in (run / RESUME, run / RESUME_OLD):
        if (folder / TRAINER_STATE).is_file():
            return folder
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


def read_trainer_state(run: Path) -> dict:
    path = resume_dir(run) / TRAINER_STATE
    state = read_json(path)
    expect(state, trainer_state_schema(), str(path))
    return state


def load_resume(run: Path, model: LanguageModel, optimizer: torch.optim.Optimizer) -> dict:
    folder = resume_dir(run)
    state = read_trainer_state(run)
    load_weights(model, folder / WEIGHTS)
    load_optimizer(optimizer, read_tensors(folder / OPTIMIZER), state.pop("optimizer_groups"), str(folder))
    return state


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """An optimizer's state as named CPU tensors ("<param index>.<slot>") and its
    parameter groups as JSON: safetensors and JSON, no pickle."""
    opt = optimizer.state_dict()
    tensors = {f"{idx}.{name}": t.detach().contiguous().cpu()
               for idx, slots in opt["state"].items() for name, t in slots.items()}
    return tensors, opt["param_groups"]


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict],
                   where: str) -> None:
    """The inverse of optimizer_tensors (`where` names the source in errors)."""
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        idx, _, name = key.partition(".")
        if not idx.isdigit() or not name:
            raise UsageError(f"{where} optimizer state holds an unexpected tensor {key!r}")
        slots.setdefault(int(idx), {})[name] = t
    try:
        optimizer.load_state_dict({"state": slots, "param_groups": groups})
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
        raise UsageError(f"{where} optimizer state does not fit the model ({first_line(e)})") from None


# -- metrics -----------------------------------------------------------------------


def append_metrics(run: Path, record: dict) -> None:
    with open(run / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def iter_metrics(run: Path, fields: dict[str, dict] | None = None) -> Iterator[dict]:
    """metrics.jsonl's records, streamed (a long run's file is large); only a last line
    cut short by a crash is dropped. Each has a type and a step, and a record whose type
    is in `fields` also the fields that schema names (e.g. {"eval": {"val_loss": float}})."""
    path = run / METRICS
    if not path.is_file():
        return
    for n, record in iter_jsonl(path):
        expect(record, {"type": str, "step": int}, f"{path} line {n}")
        if fields and record["type"] in fields:
            expect(record, fields[record["type"]], f"{path} line {n}")
        yield record


def read_metrics(run: Path) -> list[dict]:
    """iter_metrics's records, as a list."""
    return list(iter_metrics(run))
