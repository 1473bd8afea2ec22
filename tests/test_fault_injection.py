"""Kills: a short SIGKILL campaign (fault_injection.py runs the long one), and a kill
simulated at each write of a checkpoint that holds a new best model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gptcli.commands import run_folder
from gptcli.store import checkpoint as ckpt

from fault_injection import campaign
from helpers import TINY_FLAGS, cli


@pytest.mark.slow
def test_sigkill_at_random_moments_and_inside_writes_never_breaks_the_run_folder(isolated, monkeypatch, capsys):
    """The kills hit `gptcli train` subprocesses; the checks after them (info, generate,
    the last resume) run in-process, which saves a torch import each."""
    in_process = lambda *args: cli(monkeypatch, capsys, *args)  # noqa: E731
    result = campaign(isolated, kills=5, seed=1, log=lambda _: None, gptcli=in_process)
    assert result["survived"] == 5
    assert result["during_write"] >= 1  # kills 1, 3 and 5 are aimed at writes
    assert result["final_steps"] > 0


class Killed(BaseException):
    """A SIGKILL as the run folder sees it: nothing after it runs, no error handling."""


def _kill_inside_checkpoints(monkeypatch, run, victim: str) -> None:
    """From now on, a checkpoint dies as it starts the write `victim` names."""
    armed = []
    original = run_folder.RunFolderHooks.on_checkpoint

    def on_checkpoint(self, trainer, is_best, state):
        armed.append(is_best)
        original(self, trainer, is_best, state)

    def dying(real, top_level_only=False):
        def call(*args, **kwargs):
            if armed and (not top_level_only or Path(args[0]).resolve() == (run / ckpt.WEIGHTS).resolve()):
                raise Killed
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(run_folder.RunFolderHooks, "on_checkpoint", on_checkpoint)
    module = run_folder if victim == "save_weights" else ckpt  # where the checkpoint hook finds the function
    monkeypatch.setattr(module, victim, dying(getattr(module, victim), top_level_only=victim == "save_weights"))


@pytest.mark.parametrize("victim", ["save_resume", "save_weights", "write_config"])
def test_a_kill_inside_a_best_checkpoint_leaves_weights_state_and_config_agreeing(monkeypatch, capsys, small_corpus,
                                                                                    victim):
    """A new best is written to model.safetensors, resume/ and config.json in turn. Killed
    between two of them, the model file and the trainer state disagree about which step is
    best: a resume that cannot replay the same losses (a lowered --max-steps, a GPU) then
    credits the file with another step's loss, or lets a later evaluation replace it. After
    the kill, the next --resume must find all three naming the same best."""
    run = small_corpus.parent / "run"
    base = ["train", str(small_corpus), *TINY_FLAGS, "--eval-interval", "2", "--out", "run"]
    assert cli(monkeypatch, capsys, *base, "--max-steps", "4")[0] == 0
    with monkeypatch.context() as m:
        _kill_inside_checkpoints(m, run, victim)
        with pytest.raises(Killed):
            cli(m, capsys, "train", "--resume", "run", "--max-steps", "6")
    evals = [r for r in ckpt.read_metrics(run) if r["type"] == "eval"]
    assert evals[-1]["step"] == 6 and evals[-1]["val_loss"] < evals[-2]["val_loss"]  # the kill hit a new best
    ckpt.load_run(run)

    state = json.loads((ckpt.resume_dir(run) / ckpt.TRAINER_STATE).read_text())["trainer"]
    code, _, err = cli(monkeypatch, capsys, "train", "--resume", "run", "--max-steps", str(state["step"]))
    assert code == 0, err  # a resume that loads, reconciles, and trains no further
    assert ("restored the best weights of step 6" in err) == (victim == "save_weights"), err
    state = json.loads((run / ckpt.RESUME / ckpt.TRAINER_STATE).read_text())["trainer"]
    assert state["best_step"] == state["step"]
    assert (run / ckpt.WEIGHTS).read_bytes() == (run / ckpt.RESUME / ckpt.WEIGHTS).read_bytes()
    summary = json.loads((run / ckpt.CONFIG).read_text())["training"]
    assert (summary["best_step"], summary["best_val_loss"]) == (state["best_step"], state["best_val_loss"])
