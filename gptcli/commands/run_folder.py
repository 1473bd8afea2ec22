"""How a training run reports into its run folder: the trainer's hooks write checkpoints,
metrics.jsonl and config.json's summary, and show progress; `restore_from` brings a
resumed folder up to its last checkpoint. Used by commands/train.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from gptcli.config import ModelConfig
from gptcli.settings import format_duration
from gptcli.store import atomic
from gptcli.store import checkpoint as ckpt
from gptcli.store.weights import save_weights
from gptcli.tokenizer import BPETokenizer
from gptcli.trainer import Hooks, Trainer


class RunFolderHooks(Hooks):
    def __init__(self, run: Path, model_cfg: ModelConfig, tok: BPETokenizer, summary: dict, bar):
        self.run, self.model_cfg, self.tok, self.summary, self.bar = run, model_cfg, tok, summary, bar
        self.checkpoints = 0  # written by this process

    def _status(self, trainer: Trainer, loss: float | None = None) -> str:
        ev = trainer.state.last_eval
        parts = [f"loss {loss:.4f}" if loss is not None else ""]
        if ev:
            parts.append(f"val {ev['val_loss']:.4f} ({ev['val_bpb']:.3f} bpb)")
        return " | ".join(p for p in parts if p)

    def on_step(self, trainer: Trainer) -> None:
        if self.bar.is_bar:
            total = trainer.expected_steps()
            self.bar.update(trainer.state.step, total=max(total, trainer.state.step) if total else None)

    def on_log(self, trainer: Trainer, record: dict) -> None:
        ckpt.append_metrics(self.run, record)
        s, cfg = trainer.state, trainer.cfg
        total = trainer.expected_steps()  # with --max-time, at the pace so far
        total = max(total, s.step) if total else None
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

    def on_checkpoint(self, trainer: Trainer, is_best: bool, state: dict) -> None:
        # resume/ first: a kill before the best weights or config.json are written leaves
        # resume/ ahead of them, and resuming catches them up (restore_from). The other
        # order could leave a new best beside a trainer state that never saw it.
        ckpt.save_resume(self.run, trainer.model, trainer.optimizer, state)
        if is_best or not (self.run / ckpt.WEIGHTS).is_file():
            save_weights(self.run / ckpt.WEIGHTS, trainer.model)
        self.write_summary(trainer)
        self.checkpoints += 1

    def write_summary(self, trainer: Trainer) -> None:
        self.summary.update(training_summary(trainer))
        ckpt.write_config(self.run, self.model_cfg, self.tok, self.summary)

    def restore_from(self, trainer: Trainer) -> dict:
        """Load resume/ into the trainer, then bring the rest of the folder up to it: a kill
        can fall after resume/ is swapped in and before model.safetensors or config.json
        are written (and metrics.jsonl may run past the checkpoint). Returns the trainer
        state it loaded."""
        ckpt.clean_stale(self.run)
        state = ckpt.load_resume(self.run, trainer.model, trainer.optimizer)
        trainer.load_state_dict(state)
        s = trainer.state
        self.bar.line(f"resuming {self.run} at step {s.step}")
        if s.best_step == s.step and ckpt.restore_best(self.run):
            self.bar.line(f"{ckpt.WEIGHTS}: restored the best weights of step {s.step}, which the last run "
                          "stopped before writing")
        _truncate_metrics(self.run, s.step)
        self.write_summary(trainer)
        return state


def training_summary(trainer: Trainer) -> dict:
    s = trainer.state
    best = s.last_eval if s.last_eval.get("step") == s.best_step else {}
    return {"steps": s.step, "tokens_seen": s.tokens_seen, "elapsed_sec": round(s.elapsed, 2),
            "schedule_steps": s.total_steps, "best_step": s.best_step, "best_val_loss": s.best_val_loss,
            **({"best_val_bpb": best["val_bpb"]} if best else {}),
            "last_eval": s.last_eval}


def _truncate_metrics(run: Path, step: int) -> None:
    """Drop records a killed run wrote after its last checkpoint: they are redone."""
    with atomic.atomic_path(run / ckpt.METRICS) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for record in ckpt.iter_metrics(run):  # streamed: a long run's file is large
            if record["step"] <= step:
                out.write(json.dumps(record) + "\n")
