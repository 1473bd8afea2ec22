"""`gptcli train`: corpus -> tokenizer -> token cache -> model -> trainer -> run folder.

Owns the decisions between the stages (which settings, which tokenizer, which run
folder, what resume restores) and the order that keeps users' files safe: every check
runs before anything is created or deleted; a new tokenizer is saved only once the data
fits; `--overwrite` trains beside the old run and swaps it in at the end; a run that
fails before its first checkpoint leaves nothing behind. Under torchrun, rank 0 does all
of that and the other ranks follow it (`_follow`). The plan is train_plan.py's, the loop
trainer.py's, the hooks run_folder.py's, run folders checkpoint.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from gptcli import budget, distributed, workspace
from gptcli.architectures import build
from gptcli.architectures import of as architecture
from gptcli.commands import inputs
from gptcli.commands.run_folder import RunFolderHooks
from gptcli.commands.train_plan import (
    Plan,
    TrainRequest,
    check_same_corpus,
    matched_shape,
    plan_new,
    plan_resume,
)
from gptcli.config import DEFAULT_PRESET, ModelConfig, TrainConfig
from gptcli.console import Console
from gptcli.corpus import Document, documents, iter_documents_text
from gptcli.data import Split, check_fits
from gptcli.device import Precision, cpu_caps, pick_device, pick_precision, seed_everything
from gptcli.distributed import Dist
from gptcli.errors import GptcliError, UsageError, first_line
from gptcli.settings import from_dict, to_dict
from gptcli.store import checkpoint as ckpt
from gptcli.store import folders
from gptcli.store.runlock import run_lock
from gptcli.tokenizer import BPETokenizer
from gptcli.trainer import Trainer
from gptcli.workspace import TOKENIZER_FILE

__all__ = ["TrainRequest", "TrainResult", "run"]


@dataclass
class TrainResult:
    run: Path
    reason: str  # max_steps | max_time | epochs | early_stop | interrupted
    summary: dict
    signal: int | None = None  # the signal that stopped the run, if one did
    main: bool = True  # False on torchrun's other ranks: rank 0 reports for them

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


def _tokenizer(req: TrainRequest, plan: Plan, docs: list[Document], console: Console) -> tuple[BPETokenizer, bool]:
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
        size = plan.model_cfg.vocab_size
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


# -- the command -------------------------------------------------------------------


def run(req: TrainRequest, console: Console) -> TrainResult:
    """Train as one process, or as one rank of a torchrun job (`distributed.from_env`):
    rank 0 prepares everything and trains like a single process; the others wait for
    it, then join (`_follow`)."""
    dist = distributed.from_env()
    if not dist.active:
        return _prepare_and_train(req, console, dist)
    distributed.start(dist)
    finished = False
    try:
        if not dist.main:
            result = _follow(dist)
        else:
            try:
                if "-" in req.paths:
                    raise UsageError("under torchrun every process reads the corpus: pass files or folders, not - "
                                     "(stdin)")
                result = _prepare_and_train(req, console, dist)
            except BaseException as e:
                distributed.abort_unless_announced(first_line(e))
                raise
        finished = True
        return result
    except GptcliError:
        raise
    except Exception as e:  # say which rank failed, and why the others stopped
        raise distributed.failure(dist, e) from e
    finally:
        distributed.stop(finished)


def _prepare_and_train(req: TrainRequest, console: Console, dist: Dist) -> TrainResult:
    plan = plan_resume(req) if req.resume is not None else plan_new(req)
    for warning in plan.warnings:
        console.warn(warning)
    device = distributed.place(dist, pick_device(plan.train_cfg.device))
    precision = pick_precision(plan.train_cfg.dtype, device)
    with documents(plan.paths, console.warn, plan.text_field) as docs, \
            documents(plan.val_paths, console.warn, plan.text_field) if plan.val_paths \
            else contextlib.nullcontext([]) as val_docs:
        if req.resume is not None:
            check_same_corpus(plan, docs, val_docs, req.allow_corpus_change)
        tok, new_tokenizer = _tokenizer(req, plan, docs, console)
        train_split, val_split = inputs.splits(docs, val_docs, tok, plan.train_cfg.val_fraction, console)
        digests = [[d.digest for d in docs], [d.digest for d in val_docs]]
        corpus = {"corpus": [d.name for d in docs], "corpus_digests": digests[0], "val_digests": digests[1],
                  "text_field": plan.text_field}
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
                    "world_size": dist.world, "train_tokens": len(train_split.tokens),
                    "val_tokens": len(val_split.tokens), "val_bytes": val_split.n_bytes})
    setup = _Setup(model_cfg, plan, tok, train_split, val_split, precision, summary, dist, digests)
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
    plan: Plan
    tok: BPETokenizer
    train_split: Split
    val_split: Split
    precision: Precision
    summary: dict
    dist: Dist
    digests: list[list[str]]  # the corpus's and the validation text's, as read
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


def _model(cfg: ModelConfig, train_cfg: TrainConfig, dist: Dist, device, init_weights: dict | None = None):
    """The model as training starts (under torchrun DDP then copies rank 0's weights to
    every rank; the other ranks reseed, so their dropout differs from rank 0's)."""
    seed_everything(train_cfg.seed)
    model = build(cfg)
    if init_weights is not None:
        model.load_state_dict(init_weights)
    if dist.rank:
        seed_everything(train_cfg.seed + 1_000_003 * dist.rank)
    return model.to(device)


def _train(run: Path, s: _Setup, console: Console, resume: bool) -> TrainResult:
    train_cfg, model_cfg = s.plan.train_cfg, s.model_cfg
    model = _model(model_cfg, train_cfg, s.dist, s.precision.device, s.plan.init_weights)
    s.summary["params"] = model.num_params()
    shape = architecture(model_cfg).describe(model_cfg)
    cpu = f" ({cpu_caps().describe()})" if s.precision.device.type == "cpu" else ""
    console.info(f"model: {model.num_params() / 1e6:.2f}M parameters, {shape} | {s.precision.device.type} "
                 f"{s.precision.name}{cpu}" + (f" | {s.dist.world} processes" if s.dist.active else ""))
    if s.plan.init_weights is not None:
        console.info(f"init: starting from the weights of {s.summary['init']}")
    with console.progress("training", None, "steps") as bar:
        hooks = s.hooks = RunFolderHooks(run, model_cfg, s.tok, s.summary, bar)
        trainer = Trainer(model, train_cfg, s.train_split, s.val_split, s.tok.token_byte_lengths(), s.precision, hooks,
                          s.dist)
        state = None
        if resume:
            state = hooks.restore_from(trainer)
        else:
            ckpt.write_tokenizer(run, s.tok)
            ckpt.write_config(run, model_cfg, s.tok, s.summary)
        if s.dist.active:
            _lead(trainer, s, run, state)
        reason, signum = _run_trainer(trainer, console.warn)
    s.summary["stop_reason"] = reason
    ckpt.write_config(run, model_cfg, s.tok, s.summary)
    return TrainResult(run, reason, s.summary, signum)


def _lead(trainer: Trainer, s: _Setup, run: Path, state: dict | None) -> None:
    """Rank 0, prepared: tell the other ranks what to build, wait until they have, and
    send them a resumed run's state (trainer_state.json and the optimizer's tensors)."""
    distributed.announce({"model": to_dict(s.model_cfg), "train": to_dict(s.plan.train_cfg),
                          "tokenizer": s.tok.json_text, "paths": s.plan.paths, "val_paths": s.plan.val_paths,
                          "text_field": s.plan.text_field,
                          "digests": s.digests, "run": str(run), "resume": state is not None})
    distributed.check_all_ready(None)
    if state is not None:
        tensors, groups = ckpt.optimizer_tensors(trainer.optimizer)
        distributed.broadcast_json({**state, "optimizer_groups": groups})
        distributed.broadcast_tensors(tensors)


def _follow(dist: Dist) -> TrainResult:
    """Any rank but 0: wait for rank 0 to prepare, build the same trainer (the corpus
    through the token cache rank 0 filled), and train in step with it, silently."""
    message = distributed.await_announcement()
    trainer, problem = None, None
    try:
        trainer = _join(message, dist)
    except Exception as e:
        problem = f"rank {dist.rank}: {first_line(e)}"
    distributed.check_all_ready(problem)
    if message["resume"]:
        state = distributed.broadcast_json(None)
        tensors = distributed.broadcast_tensors(None)
        ckpt.load_optimizer(trainer.optimizer, tensors, state.pop("optimizer_groups"), "rank 0's")
        trainer.load_state_dict(state)
    reason, signum = _run_trainer(trainer, lambda message: None)
    return TrainResult(Path(message["run"]), reason, {}, signum, main=False)


def _join(message: dict, dist: Dist) -> Trainer:
    silent = Console(silent=True)
    model_cfg = from_dict(ModelConfig, message["model"], "rank 0's model settings").validate()
    train_cfg = from_dict(TrainConfig, message["train"], "rank 0's training settings").validate()
    tok = BPETokenizer.from_text(message["tokenizer"], "rank 0's tokenizer")
    precision = pick_precision(train_cfg.dtype, distributed.place(dist, pick_device(train_cfg.device)))
    paths, val_paths, field = message["paths"], message["val_paths"], message["text_field"]
    with documents(paths, silent.warn, field) as docs, documents(val_paths, silent.warn, field) if val_paths \
            else contextlib.nullcontext([]) as val_docs:
        if [[d.digest for d in docs], [d.digest for d in val_docs]] != message["digests"]:
            raise UsageError("it reads other text than rank 0 does: every machine needs the same corpus at the same "
                             "path")
        train_split, val_split = inputs.splits(docs, val_docs, tok, train_cfg.val_fraction, silent)
    model = _model(model_cfg, train_cfg, dist, precision.device)
    return Trainer(model, train_cfg, train_split, val_split, tok.token_byte_lengths(), precision, None, dist)


def _run_trainer(trainer: Trainer, warn) -> tuple[str, int | None]:
    """Wrap for DDP and compile if asked, then train until a stop; returns why it stopped
    and the signal that stopped it, if one did."""
    trainer.start_data_parallel()
    if trainer.cfg.compile:
        trainer.try_compile(warn)
    restore, received = _install_stop_handlers(trainer)
    try:
        reason = trainer.run()
    finally:
        restore()
    return reason, received[0] if received else None


def _install_stop_handlers(trainer: Trainer):
    """First Ctrl-C (or SIGTERM): finish the step, checkpoint, stop. A second Ctrl-C
    stops at once; the last checkpoint is intact because every write is atomic. Under
    torchrun every rank gets the signal, and the trainer makes them stop at one step."""
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
