"""Kill `gptcli train` with SIGKILL, at random moments and inside checkpoint writes, and
check the run folder survives every kill.

Each round starts (or resumes) a small training run that checkpoints every two steps and
kills it once it holds the run folder and a checkpoint exists. Rounds alternate between
an aimed kill and a random one. A random kill falls up to a second after the trainer's
first checkpoint starts, anywhere in its steps, evaluations and checkpoints (the seconds
before go to importing torch and loading). For an aimed kill a watch of the run folder
every 0.5 ms times how long one checkpoint's staged `.resume.*` folder lives, sees a
later checkpoint start, and kills the trainer at a random point of its writes (staging
resume/, the swap, model.safetensors, config.json: ~15 ms here); a point that falls
after them, on a busy machine, moves to the next checkpoint. After each kill
`gptcli info` reads the folder, `gptcli generate` works from it, and the next round's
`--resume` continues; the last resume runs to its end and must leave model.safetensors,
resume/ and config.json naming one best step.

A kill counts as "during a write" only by what it left behind, new since the round began:
a temp file, a staged or old resume folder, a config.json older than resume/, or a cut
metrics line. The test suite runs a short campaign (test_fault_injection.py); run a long
one with

    python tests/fault_injection.py --kills 30
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "gptcli" / "assets" / "tinyshakespeare.txt"
FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
         "--eval-iters", "2", "--eval-interval", "2", "--log-interval", "1", "--vocab-size", "300",
         "--max-steps", "100000"]
POLL = 0.0005  # seconds between looks at the run folder while waiting for a checkpoint
AIM_CHECKPOINTS = 3  # an aimed kill falls in the n-th checkpoint the trainer starts, n in 2..1+this
WRITES_PER_STAGING = 1.3  # a checkpoint's writes last about this times its staging of resume/
# (here ~10 ms staging, then ~5 ms for the swap, model.safetensors and config.json)
AIM_TRIES = 10  # checkpoints an aimed kill may try before it settles for a miss
RANDOM_DELAY = 1.0  # a random kill comes up to this many seconds after the first checkpoint starts
RESTORED = "restored the best weights"  # what --resume says when a kill cut off a new best


def subprocess_gptcli(work: Path, env: dict):
    """`gptcli ARGS` in a subprocess of its own, as a user runs it: (exit code, stdout, stderr)."""
    def run(*args: str) -> tuple[int, str, str]:
        done = subprocess.run([sys.executable, "-m", "gptcli", *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=300)
        return done.returncode, done.stdout, done.stderr
    return run


def _state(run: Path) -> dict:
    folder = run / "resume" if (run / "resume" / "trainer_state.json").is_file() else run / "resume.old"
    return json.loads((folder / "trainer_state.json").read_text())["trainer"]


def _summary(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())["training"]


def leftovers(run: Path) -> dict[tuple, str]:
    """The evidence of writes a kill cut short, each keyed so that what an earlier kill
    left (and no process has cleaned up yet) is not counted again."""
    found = {}
    for path in sorted(run.rglob(".*")):
        if path.name.endswith(".tmp"):
            found[("tmp", str(path))] = "temp file"
        elif path.name.startswith(".resume."):
            found[("staged", path.name)] = "staged resume/"
    old = run / "resume.old"
    if old.exists():
        found[("old", old.stat().st_ino, old.stat().st_mtime_ns)] = "swapping resume/ in"
    if (run / "resume").exists() and _state(run)["step"] != _summary(run).get("steps", 0):
        found[("config", _state(run)["step"])] = "after resume/, before model.safetensors or config.json"
    metrics = run / "metrics.jsonl"
    if metrics.is_file() and not metrics.read_bytes().endswith(b"\n"):
        found[("metrics", metrics.stat().st_size)] = "metrics line"
    return found


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until `proc` holds the run folder (a killed round's stale lock names another pid)
    and the folder has a checkpoint to protect (a new run's first one takes a moment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            ours = (run / ".lock").read_text().strip() == str(proc.pid)
        except OSError:
            ours = False
        if ours and ((run / "resume").exists() or (run / "resume.old").exists()):
            return
        time.sleep(0.01)


def _wait_for_staging(run: Path, proc: subprocess.Popen, n: int, timeout: float = 60) -> float:
    """Until `proc` has started n more checkpoints (n staged `.resume.*` folders appeared);
    returns how long the shortest-lived finished one lived (0 if none finished)."""
    seen, born, lived = set(os.listdir(run)), {}, math.inf
    deadline = time.monotonic() + timeout
    while n > 0 and time.monotonic() < deadline and proc.poll() is None:
        now, t = set(os.listdir(run)), time.monotonic()
        for name in now - seen:
            if name.startswith(".resume."):
                n, born[name] = n - 1, t
        for name in seen - now:
            if name in born:
                lived = min(lived, t - born.pop(name))
        seen = now
        time.sleep(POLL)
    return lived if lived < math.inf else 0.0


def _checkpointing(run: Path) -> bool:
    """Whether a checkpoint's writes are under way (cheap enough to ask just before a kill)."""
    try:
        if any(name.endswith(".tmp") or name.startswith(".resume.") or name == "resume.old"
               for name in os.listdir(run)):
            return True
        return (run / "resume" / "trainer_state.json").stat().st_mtime_ns > (run / "config.json").stat().st_mtime_ns
    except FileNotFoundError:
        return True  # between the renames of a swap


def _kill(run: Path, proc: subprocess.Popen, rng: random.Random, aimed: bool) -> None:
    _wait_for_checkpoint(run, proc)
    if aimed:  # time one checkpoint, then kill at a random point of a later one's writes
        lived = _wait_for_staging(run, proc, rng.randint(2, 1 + AIM_CHECKPOINTS))
        for _ in range(AIM_TRIES):
            time.sleep(rng.uniform(0.0, WRITES_PER_STAGING * lived))
            if _checkpointing(run):
                break
            _wait_for_staging(run, proc, 1)  # the point fell after the writes: try the next checkpoint
    else:  # any moment of training: a step, an evaluation, a checkpoint
        _wait_for_staging(run, proc, 1)
        time.sleep(rng.uniform(0.0, RANDOM_DELAY))
    if proc.poll() is not None:
        raise AssertionError("training ended before the kill")
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _check_loads(gptcli, i: int) -> None:
    code, out, err = gptcli("info", "run", "--json")
    assert code == 0, f"kill {i + 1}: gptcli info failed: {err[-500:]}"
    assert json.loads(out)["resumable"], f"kill {i + 1}: the run folder cannot be resumed"
    code, _, err = gptcli("generate", "-c", "run", "-p", "ROMEO:", "-n", "5", "--greedy")
    assert code == 0, f"kill {i + 1}: generate failed: {err[-500:]}"


def _check_agrees(run: Path) -> None:
    """After a clean finish: config.json and resume/ name the same best, and when the last
    step was the best, model.safetensors holds resume/'s weights."""
    state, summary = _state(run), _summary(run)
    assert (summary["best_step"], summary["best_val_loss"]) == (state["best_step"], state["best_val_loss"])
    if state["best_step"] == state["step"]:
        assert (run / "model.safetensors").read_bytes() == (run / "resume" / "model.safetensors").read_bytes()


def campaign(work: Path, kills: int, seed: int = 0, log=print, gptcli=None) -> dict:
    """Kill a training run in `work`/run `kills` times. `gptcli(*args)` runs the checks and
    the last resume, by default each in a subprocess; the kills always hit a subprocess."""
    rng = random.Random(seed)
    env = {**os.environ, "GPTCLI_CACHE_DIR": str(work / "cache"), "NO_COLOR": "1"}
    gptcli = gptcli or subprocess_gptcli(work, env)
    corpus = work / "corpus.txt"
    corpus.write_text(SAMPLE.read_text(encoding="utf-8")[:40000], encoding="utf-8")
    run = work / "run"
    t0 = time.perf_counter()
    survived, restored, cuts = 0, 0, Counter()
    log_file = work / "train.stderr"  # a file, not a pipe: nobody would read a pipe while training fills it
    for i in range(kills):
        args = ["train", "--resume", "run"] if (run / "resume").exists() or (run / "resume.old").exists() \
            else ["train", str(corpus), *FLAGS, "--out", "run", "--overwrite"]
        before = leftovers(run) if run.exists() else {}
        with open(log_file, "w") as f:
            proc = subprocess.Popen([sys.executable, "-m", "gptcli", *args], cwd=work, env=env,
                                    stdout=subprocess.DEVNULL, stderr=f)
        aimed = i % 2 == 0
        try:
            _kill(run, proc, rng, aimed)
        except AssertionError as e:
            raise AssertionError(f"kill {i + 1}: {e}: {log_file.read_text()[-500:]}") from None
        restored += RESTORED in log_file.read_text()
        cut = next((what for key, what in leftovers(run).items() if key not in before), None)
        if cut:
            cuts[cut] += 1
        _check_loads(gptcli, i)
        survived += 1
        log(f"kill {i + 1} ({'aimed at a write' if aimed else 'random'}): survived"
            + (f", during a write ({cut})" if cut else ""))
    code, _, err = gptcli("train", "--resume", "run", "--max-steps", str(_state(run)["step"] + 4))
    assert code == 0, f"the last resume failed: {err[-500:]}"
    restored += RESTORED in err
    _check_agrees(run)
    return {"kills": kills, "survived": survived, "during_write": sum(cuts.values()), "where": dict(cuts),
            "best_restored_on_resume": restored, "final_steps": _summary(run)["steps"],
            "seconds": round(time.perf_counter() - t0, 1)}


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
