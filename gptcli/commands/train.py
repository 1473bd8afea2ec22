"""`gptcli train`: corpus -> tokenizer -> token cache -> model -> trainer -> run folder.

Owns the decisions between the stages (which settings, which tokenizer, which run
folder, what resume restores) and the trainer's hooks that write checkpoints, metrics and
progress. The loop itself is trainer.py's; run folders are checkpoint.py's.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from gptcli import atomic, folders, workspace
from gptcli import checkpoint as ckpt
from gptcli.commands import inputs
from gptcli.config import DEFAULT_MAX_STEPS, DEFAULT_PRESET, ModelConfig, TrainConfig, from_dict, preset, to_dict
from gptcli.console import Console, format_duration
from gptcli.data import Split, check_fits, check_val_fraction, collect_documents, iter_documents_text, split_train_val
from gptcli.device import dist_info, pick_device, pick_precision, rng_state, seed_everything, set_rng_state
from gptcli.errors import UsageError
from gptcli.model import GPT
from gptcli.runlock import lock_owner, run_lock
from gptcli.tokenizer import BPETokenizer
from gptcli.trainer import Hooks, Trainer
from gptcli.weights import save_weights
from gptcli.workspace import TOKENIZER_FILE

# Settings a resumed run may change: where it runs and when it stops.
RESUMABLE = ("max_steps", "max_time", "epochs", "patience", "device", "compile", "log_interval")


@dataclass
class TrainRequest:
    paths: list[str]  # files, folders, '-' (may be empty with resume)
    preset: str | None = None  # a name from config.PRESETS; None: the default one
    settings: dict = field(default_factory=dict)  # ModelConfig and TrainConfig fields the user set
    out: Path | None = None
    resume: Path | None = None
    init: Path | None = None
    overwrite: bool = False
    tokenizer: Path | None = None
    val: list[str] = field(default_factory=list)
    val_fraction: float = 0.1


@dataclass
class TrainResult:
    run: Path
    reason: str  # max_steps | max_time | epochs | early_stop | interrupted
    summary: dict
    signal: int | None = None  # the signal that stopped the run, if one did

    def to_json(self) -> dict:
        return {"run": str(self.run), "stop_reason": self.reason, **self.summary}

    def to_text(self) -> str:
        s = self.summary
        bpb = s.get("best_val_bpb")
        best = f"best val loss {s['best_val_loss']:.4f}" if s.get("best_val_loss") is not None else "no evaluation yet"
        text = (f"done ({self.reason}): step {s.get('steps')}, {best}" + (f" ({bpb:.4f} bits/byte)" if bpb else "")
                + f" -> {self.run}")
        if self.reason == "interrupted":
            text += f"\ncheckpoint saved; continue with: gptcli train --resume {self.run}"
        return text

    @property
    def exit_code(self) -> int:
        if self.reason != "interrupted":
            return 0
        return 143 if self.signal == signal.SIGTERM else 130


def settings_for(preset_name: str, given: dict) -> tuple[ModelConfig, TrainConfig]:
    """The preset's shape and training settings, with what the user gave on top."""
    chosen = preset(preset_name)
    model_names = {f.name for f in dataclasses.fields(ModelConfig)}
    model = {**chosen["model"], **{k: v for k, v in given.items() if k in model_names}}
    train = {**chosen["train"], **{k: v for k, v in given.items() if k not in model_names}}
    return ModelConfig(**model), TrainConfig(**train)


# -- run folder and tokenizer ------------------------------------------------------------


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse a bad --out before any slow work; nothing is created yet."""
    folders.check_out(out, overwrite, label=f"--out {out}", kind="a gptcli run folder", is_kind=ckpt.is_run,
                      writer=lock_owner, hint=f", or --resume {out} to continue it")


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


def resolve_tokenizer(req: TrainRequest, docs, console: Console) -> BPETokenizer:
    """--tokenizer, else ./tokenizer/tokenizer.json, else train one there."""
    if req.tokenizer is not None:
        tok = BPETokenizer.load(req.tokenizer)
        console.info(f"tokenizer: using {req.tokenizer} ({tok.vocab_size} tokens)")
    elif (workspace.TOKENIZER / TOKENIZER_FILE).is_file():
        tok = BPETokenizer.load(workspace.TOKENIZER)
        console.info(f"tokenizer: reusing {workspace.TOKENIZER / TOKENIZER_FILE} ({tok.vocab_size} tokens)")
    else:
        size = req.settings.get("vocab_size", workspace.DEFAULT_VOCAB)
        console.info(f"tokenizer: none found, training a {size}-token byte-level BPE on the corpus")
        t0 = time.perf_counter()
        tok = BPETokenizer.train(iter_documents_text(docs), size)
        path = tok.save(workspace.TOKENIZER)
        console.info(f"tokenizer: saved {path} ({tok.vocab_size} tokens, {time.perf_counter() - t0:.1f}s)")
        if tok.vocab_size < size:
            console.warn(f"the corpus only supported {tok.vocab_size} of the {size} tokens asked for")
        return tok
    asked = req.settings.get("vocab_size")
    if asked is not None and asked != tok.vocab_size:
        raise UsageError(f"--vocab-size {asked} disagrees with the tokenizer in use ({tok.vocab_size} tokens): "
                         "drop --vocab-size, or train one with `gptcli tokenizer train` and pass --tokenizer")
    return tok


# -- hooks: where the trainer's reports land ------------------------------------------


class RunFolderHooks(Hooks):
    def __init__(self, run: Path, model_cfg: ModelConfig, tok: BPETokenizer, summary: dict, bar):
        self.run, self.model_cfg, self.tok, self.summary, self.bar = run, model_cfg, tok, summary, bar

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
        status = (f"{self._status(trainer, record['loss'])} | lr {record['lr']:.2e} | "
                  f"{record['tokens_per_sec']:,.0f} tok/s")
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
            save_weights(self.run / ckpt.WEIGHTS, trainer.model)
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


def _truncate_metrics(run: Path, step: int) -> None:
    """Drop records a killed run wrote after its last checkpoint: they are redone."""
    records = [r for r in ckpt.read_metrics(run) if r.get("step", 0) <= step]
    atomic.write_text(run / ckpt.METRICS, "".join(json.dumps(r) + "\n" for r in records))


# -- planning: every check before any slow work -----------------------------------------


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


def _plan_resume(req: TrainRequest) -> _Plan:
    run = req.resume
    if req.out is not None or req.overwrite or req.init is not None or req.tokenizer is not None:
        raise UsageError("--resume continues a run in place: it takes no --out, --overwrite, --init or --tokenizer")
    doc = ckpt.read_config(run)
    ckpt.resume_dir(run)
    fixed = sorted(set(req.settings) - set(RESUMABLE)) + (["preset"] if req.preset is not None else [])
    if fixed:
        raise UsageError(f"--{fixed[0].replace('_', '-')} cannot change when resuming; only "
                         "--max-steps, --max-time, --epochs, --patience, --device and --compile can")
    previous = doc.get("training") or {}
    train_cfg = from_dict(TrainConfig, previous.get("config") or {}, f"{run / ckpt.CONFIG} training config")
    for name in set(req.settings) & set(RESUMABLE):
        setattr(train_cfg, name, req.settings[name])
    train_cfg.dtype = previous.get("dtype", train_cfg.dtype)  # the precision it ran in, for exactness
    model_cfg = ckpt.model_config(doc, run)
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
    model_cfg, train_cfg = settings_for(req.preset or DEFAULT_PRESET, req.settings)
    train_cfg.validate()
    if train_cfg.max_steps is None and train_cfg.max_time is None and train_cfg.epochs is None:
        train_cfg.max_steps = DEFAULT_MAX_STEPS
    if not req.paths:
        raise UsageError("no corpus given: pass one or more files, folders, or - for stdin")
    check_val_fraction(req.val_fraction)
    model_cfg.validate()  # the vocabulary given, or the default: the tokenizer's replaces it later
    run = req.out or workspace.default_run_folder(req.paths)
    check_out(run, req.overwrite)
    return _Plan(run, model_cfg, train_cfg, req.paths, req.val, req.val_fraction, {}, None)


# -- the command -------------------------------------------------------------------


def run(req: TrainRequest, console: Console) -> TrainResult:
    rank, world = dist_info()
    plan = _plan_resume(req) if req.resume is not None else _plan_new(req)
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
    tf = inputs.tokens(docs, tok, console, "corpus")
    byte_lengths = tok.token_byte_lengths()
    if plan.val_paths:
        vf = inputs.tokens(collect_documents(plan.val_paths, console.warn), tok, console, "validation")
        train_split, val_split = Split(tf.array(), tf.n_bytes), Split(vf.array(), vf.n_bytes)
    else:
        train_split, val_split = split_train_val(tf.array(), byte_lengths, plan.val_fraction)
    model_cfg = dataclasses.replace(model_cfg, vocab_size=tok.vocab_size).validate()
    check_fits(train_split, model_cfg.block_size, "training")
    check_fits(val_split, model_cfg.block_size, "validation")

    run = plan.run if req.resume is not None else create_out(plan.run, req.overwrite)
    with run_lock(run, console.warn):  # one writer per run folder
        seed_everything(train_cfg.seed)
        model = GPT(model_cfg)
        if init_weights is not None:
            model.load_state_dict(init_weights)
        model.to(device)
        summary = dict(plan.previous) or {
            "preset": req.preset or DEFAULT_PRESET, "corpus": [d.name for d in docs], "val_paths": list(plan.val_paths),
            "val_fraction": None if plan.val_paths else plan.val_fraction, "init": str(req.init) if req.init else None,
        }
        summary.update({"config": to_dict(train_cfg), "device": device.type, "dtype": precision.name,
                        "params": model.num_params(), "train_tokens": len(train_split.tokens),
                        "val_tokens": len(val_split.tokens), "val_bytes": val_split.n_bytes})
        console.info(f"model: {model.num_params() / 1e6:.2f}M parameters, {model_cfg.n_layer} layers, "
                     f"{model_cfg.n_head} heads, {model_cfg.n_embd} wide, context {model_cfg.block_size} | "
                     f"{device.type} {precision.name}")

        with console.progress("training", None, "steps") as bar:
            hooks = RunFolderHooks(run, model_cfg, tok, summary, bar)
            trainer = Trainer(model, train_cfg, train_split, val_split, byte_lengths, precision, hooks, rank, world)
            if req.resume is not None:
                hooks.restore_from(trainer)
            else:
                ckpt.write_tokenizer(run, tok)
                ckpt.write_config(run, model_cfg, tok, summary)
                save_weights(run / ckpt.WEIGHTS, model)
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
