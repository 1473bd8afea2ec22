"""The training loop: the optimizer and schedule of optimizers.py, gradient clipping and
accumulation, periodic evaluation with bits per byte, best-model tracking, early
stopping, a time budget kept, and a clean stop on request.

Knows nothing of files or terminals: it reports through hooks (on_step, on_log,
on_eval, on_checkpoint) and leaves saving and printing to the caller.
"""

from __future__ import annotations

import collections
import contextlib
import math
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch

from gptcli import distributed
from gptcli.architectures import LanguageModel
from gptcli.config import TrainConfig
from gptcli.data import BatchSampler, Split, spread_windows
from gptcli.device import Precision, rng_state, set_rng_state
from gptcli.distributed import Dist
from gptcli.errors import RunError, UsageError, first_line
from gptcli.optimizers import lr_at, make_optimizer
from gptcli.scoring import score_tokens, score_windows


def _field(default, help: str, optional: bool = False):
    """A TrainState field: its help text feeds docs/run-folder.md; `optional` ones may be
    absent from a saved state (added after runs were saved without them)."""
    return field(default=default, metadata={"help": help, "optional": optional})


@dataclass
class TrainState:
    """Everything about the loop's position that resume needs, saved as trainer_state.json's
    "trainer" object. The file's schema and its reference are made from these fields."""

    step: int = _field(0, "optimizer steps done")
    tokens_seen: int = _field(0, "training tokens seen, by every rank together")
    elapsed: float = _field(0.0, "seconds of training so far, across resumes")
    total_steps: int | None = _field(None, "the step limit (--max-steps, --epochs); null for a time budget alone")
    best_val_loss: float | None = _field(None, "the best validation loss so far")
    best_step: int | None = _field(None, "the step that reached it")
    evals_since_best: int = _field(0, "evaluations since then (--patience counts them)")
    last_eval: dict = field(default_factory=dict, metadata={"help": "the last evaluation's metrics record"})
    regularization: float | None = _field(None, "the share of dropout and weight decay, once settled "
                                          "(--regularize-beyond); absent in older runs", optional=True)


class Hooks:
    """Override what you need; under torchrun only rank 0's hooks are called."""

    def on_step(self, trainer: "Trainer") -> None:
        """After every optimizer step; must stay cheap (no host sync)."""

    def on_log(self, trainer: "Trainer", record: dict) -> None: ...

    def on_eval(self, trainer: "Trainer", record: dict) -> None: ...

    def on_checkpoint(self, trainer: "Trainer", is_best: bool, state: dict) -> None:
        """`state` is what resume needs: trainer_state.json (every rank's sampler and RNG)."""


STOP_REASONS = (None, "max_steps", "epochs", "max_time", "early_stop", "interrupted")  # agreed by the highest


class Trainer:
    """Under torchrun (`dist.active`), each rank draws its own batches and the gradients
    are averaged by DistributedDataParallel; the ranks agree on when to stop, log the mean
    loss, and evaluate alike, so they stay in step."""

    def __init__(self, model: LanguageModel, cfg: TrainConfig, train: Split, val: Split, byte_lengths: np.ndarray,
                 precision: Precision, hooks: Hooks | None = None, dist: Dist | None = None):
        self.model, self.cfg, self.train, self.val = model, cfg, train, val
        self.precision, self.hooks, self.dist = precision, hooks or Hooks(), dist or Dist()
        self.device = precision.device
        self.block_size = model.config.block_size
        self.byte_lengths = torch.as_tensor(byte_lengths, device=self.device)
        self.state = TrainState()
        self.sampler = BatchSampler(train.tokens, self.block_size, cfg.batch_size, cfg.seed, self.dist.rank)
        self.optimizer = make_optimizer(model, cfg, self.device)
        self._weight_decay = [group["weight_decay"] for group in self.optimizer.param_groups]  # before regularization()
        self._dropout_share: float | None = None  # what the model's dropout rates are scaled by now
        self._pace_from: tuple[int, float] | None = None  # (step, elapsed) after this process's first step
        self.scaler = torch.amp.GradScaler(self.device.type) if precision.needs_grad_scaler else None
        self.tokens_per_step = cfg.batch_size * self.block_size * cfg.grad_accum * self.dist.world
        self._ddp = None  # DistributedDataParallel, made when training starts (after a resume has loaded)
        self._step_model = model  # replaced by the DDP-wrapped or compiled model
        self._stop_requested = False
        self._final_eval_seconds = 0.0  # how long the last evaluation and checkpoint took
        self._step_seconds: collections.deque = collections.deque(maxlen=8)  # the last steps' durations
        self._clock = time.perf_counter()  # state.elapsed counts from here (see _tick)
        self._byte_lengths_np = byte_lengths
        budget = cfg.eval_iters * cfg.batch_size
        # A validation split that fits the budget is scored whole, exactly as `gptcli eval
        # --stride block_size` scores it; a larger one through evenly spread windows.
        self._val_whole = math.ceil((len(val.tokens) - 1) / self.block_size) <= budget
        self._eval_batches = {
            name: torch.from_numpy(spread_windows(split.tokens, self.block_size, budget))
            for name, split in (("train", train), ("val", val)) if not (name == "val" and self._val_whole)
        }

    # -- schedule and stopping ------------------------------------------------------
    def planned_steps(self) -> int | None:
        """The step limit implied by --max-steps and --epochs (the smaller), if any."""
        limits = []
        if self.cfg.max_steps is not None:
            limits.append(self.cfg.max_steps)
        if self.cfg.epochs is not None:
            limits.append(max(1, math.ceil(self.cfg.epochs * len(self.train.tokens) / self.tokens_per_step)))
        return min(limits) if limits else None

    def request_stop(self) -> None:
        """Finish the current optimizer step, checkpoint, and return (used for Ctrl-C)."""
        self._stop_requested = True

    def _stop_reason(self) -> str | None:
        if self._stop_requested:
            return "interrupted"
        planned = self.planned_steps()
        if planned is not None and self.state.step >= planned:
            return "max_steps" if self.cfg.max_steps == planned else "epochs"
        if self.cfg.max_time is not None:
            # stop while the next step (timed as the slowest of the last few: a shared CPU
            # makes them uneven) and the evaluation and checkpoint that end the run still fit
            # in the budget (none is needed right after one)
            ending = 0.0 if self.state.last_eval.get("step") == self.state.step else self._final_eval_seconds
            if self.state.elapsed + ending + max(self._step_seconds, default=0.0) >= self.cfg.max_time:
                return "max_time"
        if self.cfg.patience is not None and self.state.evals_since_best >= self.cfg.patience:
            return "early_stop"
        return None

    def expected_steps(self) -> int | None:
        """How many steps the run will take, for progress displays: the step limit, or
        the steps a time budget allows at the pace so far (whichever is fewer)."""
        planned = self.planned_steps()
        if self.cfg.max_time is None or self.state.step == 0 or self.state.elapsed <= 0:
            return planned
        by_time = math.ceil(self.state.step * self.cfg.max_time / self.state.elapsed)
        return by_time if planned is None else min(planned, by_time)

    def regularization(self) -> float:
        """The share of --dropout and --weight-decay the run trains with (--regularize-beyond
        N): none for a run of at most N passes over the training tokens, all from 2N, in
        proportion between. Regularisation pays once a run repeats its text many times;
        in a short one it only slows learning (docs/benchmarks.md). Settled once and then
        held, since a torch.compile'd model recompiles for every new dropout rate; until
        then (a time budget's warmup) the run trains without."""
        if self.cfg.regularize_beyond == 0:
            return 1.0
        if self.state.regularization is None:
            steps = self._steps_to_regularize_for()
            if steps is None:
                return 0.0
            passes = steps * self.tokens_per_step / len(self.train.tokens)
            self.state.regularization = min(max(passes / self.cfg.regularize_beyond - 1.0, 0.0), 1.0)
        return self.state.regularization

    def _steps_to_regularize_for(self) -> int | None:
        """The step limit, or the steps a time budget allows at the pace of its warmup
        (None until that is over), timed from this process's first step on: the first
        pays for start-up and compiling."""
        planned = self.planned_steps()
        if self.cfg.max_time is None:
            return planned
        if self._pace_from is None:
            return None
        step, elapsed = self.state.step, self.state.elapsed
        timed = step - self._pace_from[0]
        if timed < 10 or (step < self.cfg.warmup_steps and elapsed < self.cfg.max_time / 10):  # as lr_at's warmup
            return None
        by_time = step + math.ceil(timed * (self.cfg.max_time - elapsed) / (elapsed - self._pace_from[1]))
        return by_time if planned is None else min(planned, by_time)

    # -- one step -------------------------------------------------------------------
    def _batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        xy = torch.from_numpy(self.sampler.next())
        if self.device.type == "cuda":
            xy = xy.pin_memory().to(self.device, non_blocking=True)
        return xy[:, :-1], xy[:, 1:]

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            _, loss = self._step_model(x, y)
        return loss

    def train_step(self) -> torch.Tensor:
        """One optimizer step over grad_accum micro-batches; returns the mean loss (a
        tensor: reading it would force a host sync, so callers do so only when logging)."""
        lr = lr_at(self.state.step, self.cfg, self.state.total_steps, self.state.elapsed)
        share = self.regularization()
        if share != self._dropout_share:
            self.model.scale_dropout(share)
            self._dropout_share = share
        for group, decay in zip(self.optimizer.param_groups, self._weight_decay):
            group["lr"], group["weight_decay"] = lr, share * decay
        self.model.train()
        total = torch.zeros((), device=self.device)
        for micro in range(self.cfg.grad_accum):
            x, y = self._batch()
            # DDP averages gradients across ranks on the last micro-batch only
            last = self._ddp is None or micro == self.cfg.grad_accum - 1
            with contextlib.nullcontext() if last else self._ddp.no_sync():
                loss = self._forward_loss(x, y) / self.cfg.grad_accum
                (self.scaler.scale(loss) if self.scaler else loss).backward()
            total += loss.detach()
        parts = getattr(self.optimizer, "parts", [self.optimizer])  # AdamW alone, or AdamW and Muon
        if self.scaler:
            for optimizer in parts:
                self.scaler.unscale_(optimizer)
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if self.scaler:
            for optimizer in parts:
                self.scaler.step(optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.state.tokens_seen += self.tokens_per_step
        return total

    def start_data_parallel(self) -> None:
        """Wrap the model in DistributedDataParallel under torchrun. Wrapping copies rank 0's
        weights to every rank, so it comes after a resume has loaded them."""
        if self.dist.active and self._ddp is None:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = DistributedDataParallel(self.model, device_ids=ids, forward_sync_buffers=False)
            self._step_model = self._ddp

    def try_compile(self, warn) -> None:
        """torch.compile the model (after DDP wraps it), falling back to eager with a warning."""
        try:
            compiled = torch.compile(self._step_model)
            x = torch.zeros(1, min(8, self.block_size), dtype=torch.long, device=self.device)
            with torch.no_grad(), self.precision.autocast():
                compiled(x, x)
            self._step_model = compiled
        except Exception as e:  # compilers fail in many ways; eager always works
            warn(f"--compile failed, training without it ({first_line(e)[:200]})")
            self._step_model = self._ddp or self.model

    # -- evaluation -----------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean loss on fixed windows of each split, and validation bits per byte:
        total nats / ln 2 / UTF-8 bytes of the scored tokens."""
        self.model.eval()
        out = {}
        for name, windows in self._eval_batches.items():
            score = score_windows(self.model, windows, self.byte_lengths, batch_size=self.cfg.batch_size,
                                  precision=self.precision)
            out[f"{name}_loss"] = score.loss
            if name == "val":
                out["val_bpb"] = score.bits_per_byte
        if self._val_whole:
            score = score_tokens(self.model, self.val.tokens, self._byte_lengths_np, stride=self.block_size,
                                 batch_size=self.cfg.batch_size, precision=self.precision)
            out["val_loss"], out["val_bpb"] = score.loss, score.bits_per_byte
        self.model.train()
        return out

    # -- the loop -------------------------------------------------------------------
    def run(self) -> str:
        """Train until a stop condition; returns why it stopped."""
        if self.state.total_steps is None:
            self.state.total_steps = self.planned_steps()
        loss_sum, loss_n, interval_t0 = torch.zeros((), device=self.device), 0, time.perf_counter()
        interval_tokens = 0
        self._clock = time.perf_counter()
        while (reason := self._agreed_stop()) is None:
            step_t0 = time.perf_counter()
            loss = self.train_step()
            loss_sum += loss
            loss_n += 1
            interval_tokens += self.tokens_per_step
            self._tick()
            if self._pace_from is None:
                self._pace_from = (self.state.step, self.state.elapsed)
            step = self.state.step
            if self.dist.main:
                self.hooks.on_step(self)
            if step % self.cfg.log_interval == 0:
                mean = loss_sum / loss_n
                mean_loss = (distributed.mean(mean) if self.dist.active else mean).item()  # over every rank
                self._check_finite(mean_loss)
                now = time.perf_counter()
                record = {"type": "train", "step": step, "loss": mean_loss, "lr": self.optimizer.param_groups[0]["lr"],
                          "tokens": self.state.tokens_seen, "tokens_per_sec": interval_tokens / (now - interval_t0),
                          "elapsed": self.state.elapsed}
                loss_sum, loss_n, interval_t0, interval_tokens = torch.zeros((), device=self.device), 0, now, 0
                if self.dist.main:
                    self.hooks.on_log(self, record)
            self._step_seconds.append(time.perf_counter() - step_t0)
            if step % self.cfg.eval_interval == 0:
                self._eval_and_checkpoint()
                interval_t0 = time.perf_counter()  # evaluation time is not training throughput
            self._tick()
        if loss_n:
            self._check_finite((loss_sum / loss_n).item())
        if self.state.last_eval.get("step") == self.state.step:
            return reason  # the checkpoint for this step is already written
        if reason == "interrupted":  # save fast, skip the evaluation
            state = self.checkpoint_state()
            if self.dist.main:
                self.hooks.on_checkpoint(self, False, state)
        else:
            self._eval_and_checkpoint()
        self._tick()
        return reason

    def _tick(self) -> None:
        """Add the time since the last tick to state.elapsed: a time budget counts all of
        the loop (steps, logging, evaluations, checkpoints), as the user's clock does."""
        now = time.perf_counter()
        self.state.elapsed += now - self._clock
        self._clock = now

    def _agreed_stop(self) -> str | None:
        """Why to stop now, if at all. Under torchrun every rank takes the most pressing
        reason of any rank (a Ctrl-C that reached one rank, a time budget one rank used up)
        and the longest elapsed time, so all stop at the same step on the same schedule."""
        reason = self._stop_reason()
        if not self.dist.active:
            return reason
        both = torch.tensor([STOP_REASONS.index(reason), self.state.elapsed], dtype=torch.float64)
        agreed = distributed.all_max(both)
        self.state.elapsed = float(agreed[1])
        return STOP_REASONS[int(agreed[0])]

    def _eval_and_checkpoint(self) -> None:
        t0 = time.perf_counter()
        metrics = self.evaluate()
        self._check_finite(metrics["val_loss"])
        improved = self.state.best_val_loss is None or metrics["val_loss"] < self.state.best_val_loss
        if improved:
            self.state.best_val_loss, self.state.best_step = metrics["val_loss"], self.state.step
            self.state.evals_since_best = 0
        else:
            self.state.evals_since_best += 1
        record = {"type": "eval", "step": self.state.step, "tokens": self.state.tokens_seen,
                  "elapsed": self.state.elapsed, **metrics, "best_val_loss": self.state.best_val_loss}
        self.state.last_eval = record
        state = self.checkpoint_state()
        if self.dist.main:
            self.hooks.on_eval(self, record)
            self.hooks.on_checkpoint(self, improved, state)
        self._final_eval_seconds = time.perf_counter() - t0  # a time budget keeps room for the last one

    def _check_finite(self, loss: float) -> None:
        if not math.isfinite(loss):
            best = self.state.best_step
            where = (f"the last good checkpoint (step {best}) is kept" if best is not None
                     else "no checkpoint was written")
            raise RunError(f"loss became {loss} at step {self.state.step}; stopping: {where}. Try a lower --lr")

    # -- resume ---------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """What resume needs, as JSON: the loop's position, and each rank's batch sampler
        and random-number generators (under torchrun, gathered from every rank: every
        rank must call this)."""
        own = {"sampler": self.sampler.state_dict(), "rng": rng_state()}
        state = {"trainer": asdict(self.state), **own, "world_size": self.dist.world}
        if self.dist.active:
            state["ranks"] = distributed.all_gather_json(own)
        return state

    def load_state_dict(self, d: dict) -> None:
        unknown = set(d["trainer"]) - {f.name for f in fields(TrainState)}
        if unknown:
            raise UsageError(f"the saved trainer state has unknown fields: {', '.join(sorted(unknown))}")
        saved_world = d.get("world_size", 1)
        if saved_world != self.dist.world:
            raise UsageError(f"the run was trained by {saved_world} process(es) and is resumed by {self.dist.world}: "
                             "each process draws its own batches, so resume it with the same number "
                             f"(torchrun --nproc-per-node {saved_world}, or no torchrun for 1)")
        own = d["ranks"][self.dist.rank] if self.dist.active else d
        self.state = TrainState(**d["trainer"])
        self.sampler.load_state_dict(own["sampler"])
        set_rng_state(own["rng"])
