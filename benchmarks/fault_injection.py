"""Kill `gptcli train` with SIGKILL at random moments and check the run folder survives.

Each round starts (or resumes) a small training run that checkpoints every two steps,
kills it after a random delay, then checks that the folder loads, that `gptcli
generate` works from it, and the next round's `--resume` continues. A kill "during a
write" is one that left a temp file or a staged resume folder behind. The test suite
runs a short campaign; run a long one with

    python benchmarks/fault_injection.py --kills 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "gptcli" / "assets" / "tinyshakespeare.txt"
FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
         "--eval-iters", "2", "--eval-interval", "2", "--log-interval", "1", "--vocab-size", "300",
         "--max-steps", "100000"]


def gptcli(*args: str, cwd: Path, env: dict, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gptcli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, **kw)


def in_write(run: Path) -> bool:
    return any(p.name.endswith(".tmp") or p.name.startswith(".resume.") for p in run.rglob(".*"))


def campaign(work: Path, kills: int, seed: int = 0, log=print) -> dict:
    rng = random.Random(seed)
    env = {**os.environ, "GPTCLI_CACHE_DIR": str(work / "cache"), "NO_COLOR": "1"}
    corpus = work / "corpus.txt"
    corpus.write_text(SAMPLE.read_text(encoding="utf-8")[:40000], encoding="utf-8")
    run = work / "run"
    survived = during_write = 0
    for i in range(kills):
        args = ["train", "--resume", "run"] if (run / "resume").exists() or (run / "resume.old").exists() \
            else ["train", str(corpus), *FLAGS, "--out", "run", "--overwrite"]
        proc = subprocess.Popen([sys.executable, "-m", "gptcli", *args], cwd=work, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not (run / "resume").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)  # the first round: wait until there is a checkpoint to protect
        time.sleep(rng.uniform(0.0, 1.5))
        if proc.poll() is not None:
            raise AssertionError(f"round {i}: training ended before the kill: {proc.stderr.read()[-500:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        write = in_write(run)
        during_write += write
        check = [sys.executable, "-c", "import sys; from gptcli.checkpoint import load_run, resume_dir; "
                 "load_run(sys.argv[1]); resume_dir(__import__('pathlib').Path(sys.argv[1]))", str(run)]
        loaded = subprocess.run(check, capture_output=True, text=True, env=env, cwd=work)
        assert loaded.returncode == 0, f"round {i}: the run folder does not load: {loaded.stderr[-500:]}"
        gen = gptcli("generate", "-c", "run", "-p", "ROMEO:", "-n", "5", "--greedy", cwd=work, env=env)
        assert gen.returncode == 0, f"round {i}: generate failed: {gen.stderr[-500:]}"
        survived += 1
        log(f"kill {i + 1}: survived{' (during a write)' if write else ''}")
    final = gptcli("train", "--resume", "run", "--max-steps", str(_steps(run) + 4), cwd=work, env=env)
    assert final.returncode == 0, f"the last resume failed: {final.stderr[-500:]}"
    return {"kills": kills, "survived": survived, "during_write": during_write, "final_steps": _steps(run)}


def _steps(run: Path) -> int:
    return json.loads((run / "config.json").read_text())["training"].get("steps", 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = campaign(Path(tmp), args.kills, args.seed)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
