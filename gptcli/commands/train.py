"""`gptcli train`: corpus -> tokenizer -> token cache -> model -> trainer -> run folder.

Owns the decisions between the stages (which settings, which tokenizer, which run
folder, what resume restores) and the order that keeps users' files safe: every check
runs before anything is created or deleted; a new tokenizer is saved only once the data
fits; `--overwrite` trains beside the old run and swaps it in at the end; a run that
fails before its first checkpoint leaves nothing behind. The loop is trainer.py's, the
hooks run_folder.py's, run folders checkpoint.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from gptcli import budget, folders, workspace
from gptcli import checkpoint as ckpt
from gptcli.architectures import build, param_count
from gptcli.commands import inputs
from gptcli.commands.run_folder import RunFolderHooks
from gptcli.config import DEFAULT_MAX_STEPS, DEFAULT_PRESET, ModelConfig, TrainConfig, flag, preset
from gptcli.console import Console
from gptcli.corpus import Document, documents, iter_documents_text
from gptcli.data import Split, check_fits, split_train_val
from gptcli.device import dist_info, pick_device, pick_precision, seed_everything
from gptcli.errors import UsageError
from gptcli.recurrent import matched_width
from gptcli.runlock import lock_owner, refuse_if_locked, run_lock
from gptcli.settings import from_dict, to_dict
from gptcli.tokenizer import BPETokenizer
from gptcli.trainer import Trainer
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
    allow_corpus_change: bool = False  # resume on a corpus whose digests differ from the recorded ones


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
    """The preset's shape and training settings, with what the user gave on top. A
    recurrent arch takes the preset's depth; its width is matched later (matched_shape)."""
    chosen = preset(preset_name)
    model_names = {f.name for f in dataclasses.fields(ModelConfig)}
    model = {**chosen["model"], **{k: v for k, v in given.items() if k in model_names}}
    train = {**chosen["train"], **{k: v for k, v in given.items() if k not in model_names}}
    if model.get("arch", "gpt") != "gpt":
        for name in ("pos_encoding", "n_head"):
            if name in given:
                raise UsageError(f"{flag(name)} does not apply to --arch {model['arch']}: a recurrent model has no "
                                 "attention heads or positions")
        model["n_head"] = 1
    return ModelConfig(**model), TrainConfig(**train)


def matched_shape(cfg: ModelConfig, preset_name: str, given: dict) -> ModelConfig:
    """A recurrent model as large as the preset's GPT (same vocabulary and depth; the
    width solved for the parameter count), unless the user set the width."""
    if not cfg.recurrent or "n_embd" in given:
        return cfg
    shape = preset(preset_name)["model"]
    gpt = dataclasses.replace(cfg, arch="gpt", n_embd=shape["n_embd"], n_head=shape["n_head"])  # the GPT it stands for
    return dataclasses.replace(cfg, n_embd=matched_width(cfg, param_count(gpt)))


# -- planning: every check before any work ------------------------------------------


@dataclass
class _Plan:
    """What a run will do, settled before any slow work."""

    run: Path
    model_cfg: ModelConfig  # vocab_size is set once the tokenizer is known
    train_cfg: TrainConfig
    paths: list[str]
    val_paths: list[str]
    previous: dict  # the training summary of a resumed run; empty for a new one
    tok: BPETokenizer | None  # known up front when resuming or fine-tuning
    init_weights: dict | None = None  # --init: the weights to start from


def _plan_resume(req: TrainRequest) -> _Plan:
    run = req.resume
    if req.out is not None or req.overwrite or req.init is not None or req.tokenizer is not None:
        raise UsageError("--resume continues a run in place: it takes no --out, --overwrite, --init or --tokenizer")
    doc = ckpt.read_config(run)
    ckpt.read_trainer_state(run)  # a damaged state stops here, before any slow work
    previous = doc.get("training") or {}
    train_cfg = from_dict(TrainConfig, previous.get("config") or {}, f"{run / ckpt.CONFIG} training config")
    if "val_fraction" not in (previous.get("config") or {}) and previous.get("val_fraction") is not None:
        train_cfg.val_fraction = previous["val_fraction"]  # a run from before val_fraction was a setting
    model_cfg = ckpt.model_config(doc, run)
    recorded = {**to_dict(model_cfg), **to_dict(train_cfg)}
    fixed = sorted(k for k, v in req.settings.items() if k not in RESUMABLE and recorded.get(k) != v)
    if req.preset is not None and req.preset != previous.get("preset"):
        fixed.append("preset")
    if fixed:
        raise UsageError(f"{flag(fixed[0])} cannot change when resuming; only "
                         f"{', '.join(flag(name) for name in RESUMABLE)} can")
    refuse_if_locked(run)  # before any slow work; run_lock checks again when training starts
    for name in set(req.settings) & set(RESUMABLE):
        setattr(train_cfg, name, req.settings[name])
    train_cfg.dtype = previous.get("dtype", train_cfg.dtype)  # the precision it ran in, for exactness
    paths = req.paths or previous.get("corpus") or []
    if "<stdin>" in paths and not req.paths:
        raise UsageError(f"{run} was trained on stdin: pipe the same text again with `gptcli train - --resume {run}`")
    tok = BPETokenizer.load(run / TOKENIZER_FILE)
    ckpt.check_tokenizer(tok, model_cfg, doc, run)
    ckpt.read_metrics(run)  # a damaged metrics.jsonl stops here, before anything is written
    return _Plan(run, model_cfg, train_cfg.validate(), paths, req.val or previous.get("val_paths") or [], previous, tok)


def _plan_new(req: TrainRequest) -> _Plan:
    if req.tokenizer is not None and req.init is not None:
        raise UsageError("--tokenizer and --init disagree: --init uses the tokenizer of the run it starts from")
    if req.allow_corpus_change:
        raise UsageError("--allow-corpus-change only applies with --resume")
    model_cfg, train_cfg = settings_for(req.preset or DEFAULT_PRESET, req.settings)
    train_cfg.validate()
    if train_cfg.max_steps is None and train_cfg.max_time is None and train_cfg.epochs is None:
        train_cfg.max_steps = DEFAULT_MAX_STEPS
    if not req.paths:
        raise UsageError("no corpus given: pass one or more files, folders, or - for stdin")
    model_cfg.validate()  # the vocabulary given, or the default: the tokenizer's replaces it later
    run = req.out or workspace.default_run_folder(req.paths)
    folders.check_out(run, req.overwrite, label=f"--out {run}", kind="a gptcli run folder", is_kind=ckpt.is_run,
                      writer=lock_owner, hint=f", or --resume {run} to continue it")
    tok, weights = None, None
    if req.init is not None:
        init_model, tok, _ = ckpt.load_run(req.init)
        weights = init_model.state_dict()
        model_cfg = dataclasses.replace(init_model.config, dropout=model_cfg.dropout)
    elif req.tokenizer is not None:
        tok = BPETokenizer.load(req.tokenizer)
    budget.check_training(dataclasses.replace(model_cfg, vocab_size=tok.vocab_size if tok else model_cfg.vocab_size),
                          train_cfg.batch_size)
    return _Plan(run, model_cfg, train_cfg, req.paths, req.val, {}, tok, weights)


def _check_same_corpus(plan: _Plan, docs: list[Document], val_docs: list[Document], allow: bool) -> None:
    """--resume on other text than the run was trained (or validated) on is refused: the
    batches would differ, and "best" would compare losses on different validation sets."""
    for what, key, given in (("corpus", "corpus_digests", docs), ("validation text", "val_digests", val_docs)):
        recorded = plan.previous.get(key)
        if recorded is not None and recorded != [d.digest for d in given] and not allow:
            raise UsageError(f"the {what} differs from the one {plan.run} was trained on (its contents changed, or "
                             "other files were given): pass --allow-corpus-change to continue anyway")


def _tokenizer(req: TrainRequest, plan: _Plan, docs: list[Document], console: Console) -> tuple[BPETokenizer, bool]:
    """The plan's tokenizer, else ./tokenizer/tokenizer.json, else a new one trained on the
    corpus (returned unsaved, with True: it is saved once the data is known to fit)."""
    if plan.tok is not None:
        if req.tokenizer is not None:
            console.info(f"tokenizer: using {req.tokenizer} ({plan.tok.vocab_size} tokens)")
        tok = plan.tok
    elif (workspace.TOKENIZER / TOKENIZER_FILE).is_file():
        tok = BPETokenizer.load(workspace.TOKENIZER)
        console.info(f"tokenizer: reusing {workspace.TOKENIZER / TOKENIZER_FILE} ({tok.vocab_size} tokens)")
    else:
        size = req.settings.get("vocab_size", workspace.DEFAULT_VOCAB)
        console.info(f"tokenizer: none found, training a {size}-token byte-level BPE on the corpus")
        t0 = time.perf_counter()
        tok = BPETokenizer.train(iter_documents_text(docs), size)
        console.info(f"tokenizer: trained in {time.perf_counter() - t0:.1f}s ({tok.vocab_size} tokens)")
        if tok.vocab_size < size:
            console.warn(f"the corpus only supported {tok.vocab_size} of the {size} tokens asked for")
        return tok, True
    asked = req.settings.get("vocab_size")
    if asked is not None and asked != tok.vocab_size and req.resume is None and req.init is None:
        raise UsageError(f"--vocab-size {asked} disagrees with the tokenizer in use ({tok.vocab_size} tokens): "
                         "drop --vocab-size, or train one with `gptcli tokenizer train` and pass --tokenizer")
    return tok, False


def splits(docs: list[Document], val_docs: list[Document], tok: BPETokenizer, val_fraction: float,
           console: Console) -> tuple[Split, Split]:
    """The training and validation tokens: --val's text, else the corpus's last val_fraction."""
    tf = inputs.tokens(docs, tok, console, "corpus")
    if val_docs:
        vf = inputs.tokens(val_docs, tok, console, "validation")
        return Split(tf.array(), tf.n_bytes), Split(vf.array(), vf.n_bytes)
    return split_train_val(tf.array(), tok.token_byte_lengths(), val_fraction)


# -- the command -------------------------------------------------------------------


def run(req: TrainRequest, console: Console) -> TrainResult:
    rank, world = dist_info()
    plan = _plan_resume(req) if req.resume is not None else _plan_new(req)
    device = pick_device(plan.train_cfg.device)
    precision = pick_precision(plan.train_cfg.dtype, device)
    with documents(plan.paths, console.warn) as docs, documents(plan.val_paths, console.warn) if plan.val_paths \
            else contextlib.nullcontext([]) as val_docs:
        if req.resume is not None:
            _check_same_corpus(plan, docs, val_docs, req.allow_corpus_change)
        tok, new_tokenizer = _tokenizer(req, plan, docs, console)
        train_split, val_split = splits(docs, val_docs, tok, plan.train_cfg.val_fraction, console)
        corpus = {"corpus": [d.name for d in docs], "corpus_digests": [d.digest for d in docs],
                  "val_digests": [d.digest for d in val_docs]}
    model_cfg = dataclasses.replace(plan.model_cfg, vocab_size=tok.vocab_size)
    if req.resume is None and req.init is None:
        model_cfg = matched_shape(model_cfg, req.preset or DEFAULT_PRESET, req.settings)
    model_cfg.validate()
    check_fits(train_split, model_cfg.block_size, "training")
    check_fits(val_split, model_cfg.block_size, "validation")
    budget.check_training(model_cfg, plan.train_cfg.batch_size)

    if new_tokenizer:
        path = tok.save(workspace.TOKENIZER)
        console.info(f"tokenizer: saved {path}")
    summary = dict(plan.previous) or {
        "preset": req.preset or DEFAULT_PRESET, **corpus, "val_paths": list(plan.val_paths),
        "val_fraction": None if plan.val_paths else plan.train_cfg.val_fraction,
        "init": str(req.init) if req.init else None}
    summary.update({"config": to_dict(plan.train_cfg), "device": device.type, "dtype": precision.name,
                    "train_tokens": len(train_split.tokens), "val_tokens": len(val_split.tokens),
                    "val_bytes": val_split.n_bytes})
    setup = _Setup(model_cfg, plan, tok, train_split, val_split, precision, summary, rank, world)
    try:
        return _train_in_folder(req, setup, console)
    except BaseException:
        if new_tokenizer and not setup.checkpointed:  # nothing came of it: no trace of it
            (workspace.TOKENIZER / TOKENIZER_FILE).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                workspace.TOKENIZER.rmdir()
        raise


@dataclass
class _Setup:
    model_cfg: ModelConfig
    plan: _Plan
    tok: BPETokenizer
    train_split: Split
    val_split: Split
    precision: object
    summary: dict
    rank: int
    world: int
    hooks: RunFolderHooks | None = None  # once training starts

    @property
    def checkpointed(self) -> bool:
        """Whether this process wrote a checkpoint (a run folder worth keeping)."""
        return self.hooks is not None and self.hooks.checkpoints > 0


def _train_in_folder(req: TrainRequest, s: _Setup, console: Console) -> TrainResult:
    """Train into the run folder: in place when resuming; beside an old run that
    --overwrite replaces (the old one stays until the new one ends); else in a new folder,
    removed again if the run fails before its first checkpoint."""
    out = s.plan.run
    if req.resume is not None:
        with run_lock(out, console.warn):
            return _train(out, s, console, resume=True)
    if req.overwrite and out.is_dir() and any(out.iterdir()):
        with run_lock(out, console.warn):  # nobody resumes the old run while its replacement trains
            with folders.staged(out) as stage:
                with run_lock(stage, console.warn):
                    result = _train(stage, s, console, resume=False)
            return dataclasses.replace(result, run=out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create --out {out}: {e.strerror or e}") from None
    try:
        with run_lock(out, console.warn):
            return _train(out, s, console, resume=False)
    except BaseException:
        if not s.checkpointed:  # failed before its first checkpoint: leave nothing
            shutil.rmtree(out, ignore_errors=True) if created else _empty(out)
        raise


def _empty(folder: Path) -> None:
    for child in folder.iterdir():
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


def _train(run: Path, s: _Setup, console: Console, resume: bool) -> TrainResult:
    train_cfg, model_cfg = s.plan.train_cfg, s.model_cfg
    seed_everything(train_cfg.seed)
    model = build(model_cfg)
    if s.plan.init_weights is not None:
        model.load_state_dict(s.plan.init_weights)
    model.to(s.precision.device)
    s.summary["params"] = model.num_params()
    shape = (f"{model_cfg.arch}, {model_cfg.n_layer} layers, {model_cfg.n_embd} wide, windows of "
             f"{model_cfg.block_size}" if model_cfg.recurrent else f"{model_cfg.n_layer} layers, {model_cfg.n_head} "
             f"heads, {model_cfg.n_embd} wide, context {model_cfg.block_size}")
    console.info(f"model: {model.num_params() / 1e6:.2f}M parameters, {shape} | {s.precision.device.type} "
                 f"{s.precision.name}")
    if s.plan.init_weights is not None:
        console.info(f"init: starting from the weights of {s.summary['init']}")
    with console.progress("training", None, "steps") as bar:
        hooks = s.hooks = RunFolderHooks(run, model_cfg, s.tok, s.summary, bar)
        trainer = Trainer(model, train_cfg, s.train_split, s.val_split, s.tok.token_byte_lengths(), s.precision, hooks,
                          s.rank, s.world)
        if resume:
            hooks.restore_from(trainer)
        else:
            ckpt.write_tokenizer(run, s.tok)
            ckpt.write_config(run, model_cfg, s.tok, s.summary)
        if train_cfg.compile:
            trainer.try_compile(console.warn)
        restore, received = _install_stop_handlers(trainer)
        try:
            reason = trainer.run()
        finally:
            restore()
    s.summary["stop_reason"] = reason
    if s.rank == 0:
        ckpt.write_config(run, model_cfg, s.tok, s.summary)
    return TrainResult(run, reason, s.summary, received[0] if received else None)


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
