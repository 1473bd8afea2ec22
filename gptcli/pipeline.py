"""`gptcli train`, wired end to end: corpus -> tokenizer -> token cache -> model ->
trainer -> run folder.

Owns the decisions between the stages (which tokenizer, which run folder, what resume
restores) and the trainer's hooks that write checkpoints and metrics. Parsing flags is
the CLI's job; the loop itself is the trainer's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from gptcli import atomic
from gptcli import checkpoint as ckpt
from gptcli.config import (DEFAULT_MAX_STEPS, MIN_VOCAB, ModelConfig, TrainConfig, model_config_from_dict,
                           train_config_from_dict)
from gptcli.console import Console, format_duration
from gptcli.data import (Split, check_fits, check_val_fraction, collect_documents, iter_documents_text, lookup_cache,
                         split_train_val, tokenize_to_cache)
from gptcli.device import dist_info, pick_device, pick_precision, rng_state, seed_everything, set_rng_state
from gptcli.errors import UsageError
from gptcli.model import GPT
from gptcli.tokenizer import TOKENIZER_FILE, BPETokenizer
from gptcli.trainer import Hooks, Trainer

WORKSPACE_TOKENIZER = Path("tokenizer")
DEFAULT_VOCAB = 4096
# Settings a resumed run may change: where it runs and when it stops.
RESUMABLE_OVERRIDES = {"max_steps", "max_time", "epochs", "patience", "device", "compile", "log_interval"}


@dataclass
class TrainRequest:
    paths: list[str]  # files, folders, '-' (may be empty with resume)
    model: ModelConfig  # shape before the vocabulary is known
    train: TrainConfig
    preset: str
    out: Path | None = None
    resume: Path | None = None
    init: Path | None = None
    overwrite: bool = False
    tokenizer: Path | None = None
    vocab_size: int | None = None
    val: list[str] = field(default_factory=list)
    val_fraction: float = 0.1
    explicit: set[str] = field(default_factory=set)  # train/model fields the user set


@dataclass
class TrainResult:
    run: Path
    reason: str  # max_steps | max_time | epochs | early_stop | interrupted
    summary: dict
    signal: int | None = None  # the signal that stopped the run, if one did


# -- run folder --------------------------------------------------------------------


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse a bad --out before any slow work; nothing is created yet."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(f"--out {out} is not empty: pass --overwrite to replace it, or --resume {out} to continue it")
        if not ckpt.is_run(out):
            raise UsageError(f"refusing to --overwrite {out}: it is not a gptcli run folder")
        if (owner := ckpt.lock_owner(out)) is not None:
            raise UsageError(f"refusing to --overwrite {out}: gptcli process {owner} is writing to it")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot create --out {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to --out {out}: permission denied on {parent}")


def create_out(out: Path, overwrite: bool) -> Path:
    """Create the run folder (replacing an old run with --overwrite)."""
    check_out(out, overwrite)
    if out.is_dir() and overwrite and any(out.iterdir()):
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except PermissionError:
        raise UsageError(f"cannot write to --out {out}: permission denied") from None
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {e.strerror or e}") from None
    return out


def default_out(paths: list[str]) -> Path:
    first = paths[0] if paths else "run"
    stem = "stdin" if first == "-" else (Path(first).stem or Path(first).resolve().name or "run")
    return ckpt.WORKSPACE / f"{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


# -- tokenizer ---------------------------------------------------------------------


def resolve_tokenizer(req: TrainRequest, docs, console: Console) -> BPETokenizer:
    """--tokenizer, else ./tokenizer/tokenizer.json, else train one there."""
    if req.tokenizer is not None:
        tok = BPETokenizer.load(req.tokenizer)
        console.info(f"tokenizer: using {req.tokenizer} ({tok.vocab_size} tokens)")
    elif (WORKSPACE_TOKENIZER / TOKENIZER_FILE).is_file():
        tok = BPETokenizer.load(WORKSPACE_TOKENIZER)
        console.info(f"tokenizer: reusing {WORKSPACE_TOKENIZER / TOKENIZER_FILE} ({tok.vocab_size} tokens)")
    else:
        size = req.vocab_size or DEFAULT_VOCAB
        console.info(f"tokenizer: none found, training a {size}-token byte-level BPE on the corpus")
        t0 = time.perf_counter()
        tok = BPETokenizer.train(iter_documents_text(docs), size)
        path = tok.save(WORKSPACE_TOKENIZER)
        console.info(f"tokenizer: saved {path} ({tok.vocab_size} tokens, {time.perf_counter() - t0:.1f}s)")
        if tok.vocab_size < size:
            console.warn(f"the corpus only supported {tok.vocab_size} of the {size} tokens asked for")
        return tok
    if req.vocab_size is not None and req.vocab_size != tok.vocab_size:
        raise UsageError(f"--vocab-size {req.vocab_size} disagrees with the tokenizer in use ({tok.vocab_size} tokens): "
                         "drop --vocab-size, or train one with `gptcli tokenizer train` and pass --tokenizer")
    return tok


def tokenize(docs, tok: BPETokenizer, console: Console, what: str):
    total = sum(d.n_bytes for d in docs)
    tf = lookup_cache(docs, tok)
    if tf is not None:
        how = "cached"
    else:
        t0 = time.perf_counter()
        with console.progress(f"tokenizing {what}", total, "bytes") as bar:
            tf, _ = tokenize_to_cache(docs, tok, progress=lambda done, _: bar.update(done))
            bar.update(total)
        how = f"tokenized in {time.perf_counter() - t0:.1f}s"
    console.info(f"data: {what} {total:,} bytes -> {tf.n_tokens:,} tokens ({how})")
    return tf


# -- hooks: where the trainer's reports land ------------------------------------------


class RunFolderHooks(Hooks):
    def __init__(self, run: Path, model_cfg: ModelConfig, tok: BPETokenizer, summary: dict, console: Console, bar):
        self.run, self.model_cfg, self.tok, self.summary = run, model_cfg, tok, summary
        self.console, self.bar = console, bar

    def _status(self, trainer: Trainer, loss: float | None = None) -> str:
        ev = trainer.state.last_eval
        parts = [f"loss {loss:.4f}" if loss is not None else ""]
        if ev:
            parts.append(f"val {ev['val_loss']:.4f} ({ev['val_bpb']:.3f} bpb)")
        return " | ".join(p for p in parts if p)

    def on_step(self, trainer: Trainer) -> None:
        if self.bar.is_bar:
            s = trainer.state
            self.bar.update(s.step, total=max(s.total_steps, s.step) if s.total_steps else None)

    def on_log(self, trainer: Trainer, record: dict) -> None:
        ckpt.append_metrics(self.run, record)
        s, cfg = trainer.state, trainer.cfg
        # A --max-time run may outlast its fitted schedule (it then trains at the floor LR).
        total = max(s.total_steps, s.step) if s.total_steps else None
        status = f"{self._status(trainer, record['loss'])} | lr {record['lr']:.2e} | {record['tokens_per_sec']:,.0f} tok/s"
        if self.bar.is_bar:
            self.bar.update(s.step, status, total=total)
            return
        if cfg.max_time is not None:
            eta = cfg.max_time - s.elapsed
            if trainer.planned_steps() is not None:
                eta = min(eta, (total - s.step) * s.elapsed / s.step)
        else:
            eta = (total - s.step) * s.elapsed / s.step if total else None
        self.bar.line(f"step {s.step}" + (f"/{total}" if total else "") + f" | {status}"
                      + (f" | eta {format_duration(eta)}" if eta is not None else ""))

    def on_eval(self, trainer: Trainer, record: dict) -> None:
        ckpt.append_metrics(self.run, record)
        self.bar.line(f"eval step {record['step']}: train {record['train_loss']:.4f} | val {record['val_loss']:.4f} "
                      f"| val {record['val_bpb']:.4f} bits/byte")

    def on_checkpoint(self, trainer: Trainer, is_best: bool) -> None:
        # resume/ first: a kill before the best weights or config.json are written leaves
        # resume/ ahead of them, and resuming catches them up (restore_from). The other
        # order could leave a new best beside a trainer state that never saw it.
        ckpt.save_resume(self.run, trainer.model, trainer.optimizer, {**trainer.state_dict(), "rng": rng_state()})
        if is_best or not (self.run / ckpt.WEIGHTS).is_file():
            ckpt.save_weights(self.run / ckpt.WEIGHTS, trainer.model)
        self.write_summary(trainer)

    def write_summary(self, trainer: Trainer) -> None:
        self.summary.update(training_summary(trainer))
        ckpt.write_config(self.run, self.model_cfg, self.tok, self.summary)

    def restore_from(self, trainer: Trainer) -> None:
        """Load resume/ into the trainer, then bring the rest of the folder up to it: a kill
        can fall after resume/ is swapped in and before model.safetensors or config.json
        are written (and metrics.jsonl may run past the checkpoint)."""
        ckpt.clean_stale(self.run)
        state = ckpt.load_resume(self.run, trainer.model, trainer.optimizer)
        trainer.load_state_dict(state)
        set_rng_state(state["rng"])
        s = trainer.state
        self.bar.line(f"resuming {self.run} at step {s.step}")
        if s.best_step == s.step and ckpt.restore_best(self.run):
            self.bar.line(f"{ckpt.WEIGHTS}: restored the best weights of step {s.step}, which the last run "
                          "stopped before writing")
        _truncate_metrics(self.run, s.step)
        self.write_summary(trainer)


def training_summary(trainer: Trainer) -> dict:
    s = trainer.state
    best = s.last_eval if s.last_eval.get("step") == s.best_step else {}
    return {"steps": s.step, "tokens_seen": s.tokens_seen, "elapsed_sec": round(s.elapsed, 2),
            "schedule_steps": s.total_steps, "best_step": s.best_step, "best_val_loss": s.best_val_loss,
            **({"best_val_bpb": best["val_bpb"]} if best else {}),
            "last_eval": s.last_eval}


# -- the command -------------------------------------------------------------------


@dataclass
class _Plan:
    """What a run will do, settled before any slow work."""

    run: Path
    model_cfg: ModelConfig  # vocab_size is set once the tokenizer is known
    train_cfg: TrainConfig
    paths: list[str]
    val_paths: list[str]
    val_fraction: float
    previous: dict  # the training summary of a resumed run; empty for a new one
    tok: BPETokenizer | None  # known up front only when resuming


def _plan_resume(req: TrainRequest, console: Console) -> _Plan:
    run = req.resume
    doc = ckpt.read_config(run)
    ckpt.resume_dir(run)
    fixed = sorted(req.explicit - RESUMABLE_OVERRIDES)
    if fixed:
        raise UsageError(f"--{fixed[0].replace('_', '-')} cannot change when resuming; only "
                         "--max-steps, --max-time, --epochs, --patience, --device and --compile can")
    previous = doc.get("training") or {}
    train_cfg = train_config_from_dict(previous.get("config") or {})
    for name in req.explicit & RESUMABLE_OVERRIDES:
        setattr(train_cfg, name, getattr(req.train, name))
    train_cfg.dtype = previous.get("dtype", train_cfg.dtype)  # the precision it ran in, for exactness
    model_cfg = model_config_from_dict(doc["model"])
    paths = req.paths or previous.get("corpus") or []
    if "<stdin>" in paths:
        raise UsageError(f"{run} was trained on stdin: pipe the same text again with `gptcli train - --resume {run}`")
    tok = BPETokenizer.load(run / TOKENIZER_FILE)
    ckpt.check_tokenizer(tok, model_cfg, doc, run)
    return _Plan(run, model_cfg, train_cfg.validate(), paths, req.val or previous.get("val_paths") or [],
                 previous.get("val_fraction") or req.val_fraction, previous, tok)


def _plan_new(req: TrainRequest) -> _Plan:
    if req.tokenizer is not None and req.init is not None:
        raise UsageError("--tokenizer and --init disagree: --init uses the tokenizer of the run it starts from")
    train_cfg = req.train.validate()
    if train_cfg.max_steps is None and train_cfg.max_time is None and train_cfg.epochs is None:
        train_cfg.max_steps = DEFAULT_MAX_STEPS
    if not req.paths:
        raise UsageError("no corpus given: pass one or more files, folders, or - for stdin")
    check_val_fraction(req.val_fraction)
    # The vocabulary is not known yet; check everything else about the shape now.
    dataclasses.replace(req.model, vocab_size=max(req.model.vocab_size, MIN_VOCAB)).validate()
    run = req.out or default_out(req.paths)
    check_out(run, req.overwrite)
    return _Plan(run, req.model, train_cfg, req.paths, req.val, req.val_fraction, {}, None)


def train(req: TrainRequest, console: Console) -> TrainResult:
    rank, world = dist_info()
    plan = _plan_resume(req, console) if req.resume is not None else _plan_new(req)
    train_cfg = plan.train_cfg
    device = pick_device(train_cfg.device)
    precision = pick_precision(train_cfg.dtype, device)

    docs = collect_documents(plan.paths, console.warn)
    tok, model_cfg, init_weights = plan.tok, plan.model_cfg, None
    if req.resume is None and req.init is not None:
        init_model, tok, _ = ckpt.load_run(req.init)
        init_weights = init_model.state_dict()
        model_cfg = dataclasses.replace(init_model.config, dropout=model_cfg.dropout)
        console.info(f"init: starting from the weights of {req.init}")
    elif tok is None:
        tok = resolve_tokenizer(req, docs, console)
    tf = tokenize(docs, tok, console, "corpus")
    byte_lengths = tok.token_byte_lengths()
    if plan.val_paths:
        vf = tokenize(collect_documents(plan.val_paths, console.warn), tok, console, "validation")
        train_split, val_split = Split(tf.array(), tf.n_bytes), Split(vf.array(), vf.n_bytes)
    else:
        train_split, val_split = split_train_val(tf.array(), byte_lengths, plan.val_fraction)
    model_cfg = dataclasses.replace(model_cfg, vocab_size=tok.vocab_size).validate()
    check_fits(train_split, model_cfg.block_size, "training")
    check_fits(val_split, model_cfg.block_size, "validation")

    run = plan.run if req.resume is not None else create_out(plan.run, req.overwrite)
    with ckpt.run_lock(run, console.warn):  # one writer per run folder
        seed_everything(train_cfg.seed)
        model = GPT(model_cfg)
        if init_weights is not None:
            model.load_state_dict(init_weights)
        model.to(device)
        summary = dict(plan.previous) or {
            "preset": req.preset, "corpus": [d.name for d in docs], "val_paths": list(plan.val_paths),
            "val_fraction": None if plan.val_paths else plan.val_fraction, "init": str(req.init) if req.init else None,
        }
        summary.update({"config": dataclasses.asdict(train_cfg), "device": device.type, "dtype": precision.name,
                        "params": model.num_params(), "train_tokens": len(train_split.tokens),
                        "val_tokens": len(val_split.tokens), "val_bytes": val_split.n_bytes})
        console.info(f"model: {model.num_params() / 1e6:.2f}M parameters, {model_cfg.n_layer} layers, {model_cfg.n_head} heads, "
                     f"{model_cfg.n_embd} wide, context {model_cfg.block_size} | {device.type} {precision.name}")

        with console.progress("training", None, "steps") as bar:
            hooks = RunFolderHooks(run, model_cfg, tok, summary, console, bar)
            trainer = Trainer(model, train_cfg, train_split, val_split, byte_lengths, precision, hooks, rank, world)
            if req.resume is not None:
                hooks.restore_from(trainer)
            else:
                ckpt.write_tokenizer(run, tok)
                ckpt.write_config(run, model_cfg, tok, summary)
                ckpt.save_weights(run / ckpt.WEIGHTS, model)
            if train_cfg.compile:
                trainer.try_compile(console.warn)
            restore, received = _install_stop_handlers(trainer)
            try:
                reason = trainer.run()
            finally:
                restore()
        summary["stop_reason"] = reason
        if rank == 0:
            ckpt.write_config(run, model_cfg, tok, summary)
        return TrainResult(run, reason, summary, received[0] if received else None)


def _truncate_metrics(run: Path, step: int) -> None:
    """Drop records a killed run wrote after its last checkpoint: they are redone."""
    records = [r for r in ckpt.read_metrics(run) if r.get("step", 0) <= step]
    atomic.write_text(run / ckpt.METRICS, "".join(json.dumps(r) + "\n" for r in records))


def _install_stop_handlers(trainer: Trainer):
    """First Ctrl-C (or SIGTERM): finish the step, checkpoint, stop. A second Ctrl-C
    stops at once; the last checkpoint is intact because every write is atomic."""
    received: list[int] = []

    def handler(signum, frame):
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        trainer.request_stop()

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore():
        for s, h in old.items():
            signal.signal(s, h)

    return restore, received
