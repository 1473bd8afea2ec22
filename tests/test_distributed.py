"""`gptcli train` under torchrun: two CPU processes over gloo, as CI can run them.

Each test starts torchrun as a subprocess (`python -m torch.distributed.run`), so the
ranks are real processes with the environment torchrun gives them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gptcli.distributed import Dist

from helpers import REPO, SHAKESPEARE, TINY_FLAGS, run_gptcli

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("ddp_worker.py")


def torchrun(*args: str, cwd: Path, nproc: int = 2, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                           str(nproc), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


@pytest.mark.parametrize("accum", [1, 2])
def test_one_ddp_step_equals_one_process_accumulating_both_ranks_batches(tmp_path, accum):
    sys.path.insert(0, str(WORKER.parent))
    from ddp_worker import tiny_trainer

    out = tmp_path / "ddp.safetensors"
    result = torchrun(str(WORKER), "step", str(out), str(accum), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = load_file(out)

    single = tiny_trainer(Dist(), grad_accum=2 * accum)
    ranks = [tiny_trainer(Dist(rank, 2), accum).sampler for rank in (0, 1)]  # each rank's batches, in turn
    order = iter([ranks[0]] * accum + [ranks[1]] * accum)
    single.sampler = type("Both", (), {"next": lambda self: next(order).next()})()
    single.train_step()
    moved = 0.0
    start = dict(tiny_trainer(Dist(), 1).model.named_parameters())
    assert set(ddp) == set(start)
    for name, value in single.model.named_parameters():
        assert torch.allclose(ddp[name], value, atol=1e-6, rtol=0), name
        moved = max(moved, (value - start[name]).abs().max().item())
    assert moved > 1e-4  # the step did change the weights


CONSTANT_LR = ["--warmup-steps", "0", "--lr", "3e-3", "--min-lr", "3e-3", "--eval-interval", "10", "--device", "cpu"]


def _train(tmp_path, *args, nproc=2):
    return torchrun("-m", "gptcli", "train", str(SHAKESPEARE), *TINY_FLAGS, *CONSTANT_LR, *args, cwd=tmp_path,
                    nproc=nproc)


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["type"] == "train"}


def test_two_ranks_train_resume_and_match_an_uninterrupted_run(tmp_path):
    straight = _train(tmp_path, "--max-steps", "30", "--out", "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = _train(tmp_path, "--max-steps", "20", "--out", "split")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun("-m", "gptcli", "train", "--resume", "split", "--max-steps", "30", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming split at step 20" in resumed.stderr

    a, b = _losses(tmp_path / "straight"), _losses(tmp_path / "split")
    assert sorted(a) == sorted(b) == list(range(1, 31))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-5), step
    weights = [load_file(tmp_path / run / "resume" / "model.safetensors") for run in ("straight", "split")]
    for name, value in weights[0].items():
        assert torch.allclose(value, weights[1][name], atol=1e-5, rtol=0), name

    info = json.loads(run_gptcli("info", "split", "--json", cwd=tmp_path).stdout)
    assert info["training"]["world_size"] == 2
    assert info["training"]["tokens_seen"] == 30 * 2 * 4 * 32  # every rank's batches count
    gen = run_gptcli("generate", "--checkpoint", "split", "--prompt", "ROMEO:", "--max-new-tokens", "5", cwd=tmp_path)
    assert gen.returncode == 0 and gen.stdout.strip(), gen.stderr


def test_a_rank_that_fails_ends_the_job_quickly_with_a_clear_error(tmp_path):
    t0 = time.monotonic()
    result = torchrun(str(WORKER), "fail", "3", "train", str(SHAKESPEARE), *TINY_FLAGS, *CONSTANT_LR,
                      "--max-steps", "1000", "--out", "run", cwd=tmp_path, timeout=120)
    assert time.monotonic() - t0 < 60
    assert result.returncode != 0
    assert "error: rank 1: RuntimeError: injected failure on rank 1 at step 3" in result.stderr
    assert "error: rank 0: lost contact with the other training processes" in result.stderr
    assert not (tmp_path / "run").exists()  # it failed before its first checkpoint


def test_bad_input_under_torchrun_is_one_error_line_from_rank_0(tmp_path):
    result = _train(tmp_path, "--max-steps", "5", "missing.txt")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: missing.txt: no such file or folder"], result.stderr[-3000:]
    assert not (tmp_path / "checkpoints").exists()
    result = torchrun("-m", "gptcli", "train", "-", *TINY_FLAGS, cwd=tmp_path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: under torchrun every process reads the corpus: pass files or folders, not - (stdin)"]


def test_resuming_with_another_number_of_processes_is_refused(tmp_path):
    first = run_gptcli("train", str(SHAKESPEARE), *TINY_FLAGS, *CONSTANT_LR, "--max-steps", "3", "--out", "one",
                       cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    result = torchrun("-m", "gptcli", "train", "--resume", "one", "--max-steps", "6", cwd=tmp_path)
    assert result.returncode != 0
    assert "trained by 1 process(es) and is resumed by 2" in result.stderr
    assert json.loads((tmp_path / "one" / "config.json").read_text())["training"]["steps"] == 3
