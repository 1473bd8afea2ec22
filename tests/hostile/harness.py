"""The hostile suite's harness: each case runs gptcli as a process of its own (forked by
zygote.py, or exec'd) in a copy of a prepared workspace, with a memory cap and a
timeout, and is judged the same way: its exit code; for an error, one clean `error:`
line last on stderr and nothing on stdout; never a traceback; bounded time and memory;
and the state of the files afterwards, by the case's own check."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
        "--eval-iters", "2", "--log-interval", "1"]


@dataclass
class Case:
    name: str
    cls: str  # what it probes: data-loss, corrupt-state, hang, memory, streams, bad-input
    args: list[str]
    code: int = 2
    match: str | None = None  # must appear in the error line (or, for a success, on stderr)
    setup: Callable[[Path], None] | None = None  # makes the workspace hostile
    check: Callable[[Path, Result], None] | None = None  # the files afterwards
    stdin: object = b""  # bytes, a path string ("/dev/zero"), or None for a closed stdin
    stdout: object = "file"  # "file", None (closed), "full" (/dev/full), or ("head", n)
    stderr: object = "file"  # "file" or None (closed)
    encoding: str = "utf-8"  # what the child's Python would pick for its streams (ASCII locale: "ascii")
    env: dict = field(default_factory=dict)
    signal: str | None = None  # sent after signal_after seconds
    signal_after: float = 0.0
    timeout: float = 90.0
    max_seconds: float | None = None  # besides the timeout: how long the answer may take
    memory_mb: int = 4096
    umask: int | None = None  # the child's umask (None: the test process's)
    unprivileged: bool = False  # run as root without its override of file permissions (a read-only file stays so)


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    seconds: float
    max_rss_mb: float
    timed_out: bool


class Zygote:
    """The forking server, one per test session."""

    def __init__(self, repo: Path):
        env = {**os.environ, "PYTHONPATH": str(repo)}
        self.proc = subprocess.Popen([sys.executable, str(HERE / "zygote.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=repo)
        assert json.loads(self.proc.stdout.readline())["ready"]

    def run(self, spec: dict) -> dict:
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def run_case(case: Case, ws: Path, zygote: Zygote) -> Result:
    """Run one case in workspace `ws` (already copied and set up)."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(ws), "GPTCLI_CACHE_DIR": str(ws / ".cache"),
           "NO_COLOR": "1", "LANG": "C.UTF-8", **case.env}
    io = ws.parent / f"{ws.name}.io"
    io.mkdir()
    if isinstance(case.stdin, bytes):
        (io / "stdin").write_bytes(case.stdin)
        stdin = [str(io / "stdin"), "r"]
    else:
        stdin = None if case.stdin is None else [case.stdin, "r"]
    stdout = {"file": [str(io / "stdout"), "w"], None: None, "full": ["/dev/full", "w"]}.get(case.stdout) \
        if not isinstance(case.stdout, tuple) else ["|head", case.stdout[1]]
    stderr = [str(io / "stderr"), "w"] if case.stderr == "file" else None
    raw = zygote.run({"cwd": str(ws), "env": env, "args": case.args, "stdin": stdin, "stdout": stdout,
                      "stderr": stderr, "encoding": case.encoding, "memory_mb": case.memory_mb,
                      "timeout": case.timeout, "signal": case.signal, "umask": case.umask,
                      "unprivileged": case.unprivileged,
                      "signal_after": case.signal_after if case.signal else None})

    def read(name: str) -> str:
        path = io / name
        return path.read_bytes().decode("utf-8", "replace") if path.exists() else ""

    out = raw["head"] if raw.get("head") is not None else read("stdout")
    return Result(raw["code"], out, read("stderr"), raw["seconds"], raw["max_rss_mb"], raw["timed_out"])


def judge(case: Case, r: Result, ws: Path) -> None:
    """The rules every case is held to, then the case's own check of the files."""
    context = f"{case.name}: code {r.code}, {r.seconds:.1f}s, {r.max_rss_mb:.0f} MB\nstderr: {r.stderr[-1500:]}"
    assert not r.timed_out, f"timed out: {context}"
    assert "Traceback" not in r.stderr, context
    assert r.code == case.code, context
    if case.code in (1, 2) and case.stderr == "file":
        lines = r.stderr.rstrip("\n").split("\n")
        errors = [line for line in lines if line.startswith("error:")]
        assert len(errors) == 1 and lines[-1] == errors[0], context
        if case.match:
            assert re.search(case.match, errors[0]), f"{case.match!r} not in {errors[0]!r}"
        if case.stdout == "file":
            assert r.stdout == "", context
    elif case.match and case.stderr == "file":
        assert re.search(case.match, r.stderr), f"{case.match!r} not on stderr: {context}"
    if case.max_seconds is not None:
        assert r.seconds <= case.max_seconds, context
    assert r.max_rss_mb <= case.memory_mb, context
    if case.check:
        case.check(ws, r)


def prepare(base: Path) -> None:
    """The workspace every case starts from: a corpus, a trained tiny run (`run`, and a
    copy `keep`), the workspace tokenizer, an HF export of the run (`hf`), and a notes
    folder of the user's (`notes`)."""
    from helpers import SHAKESPEARE

    base.mkdir(parents=True)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    (base / "corpus.txt").write_text(text[:30000], encoding="utf-8")
    (base / "val.txt").write_text(text[-4000:], encoding="utf-8")
    env = {**os.environ, "GPTCLI_CACHE_DIR": str(base / ".cache"), "NO_COLOR": "1"}

    def gptcli(*args: str) -> None:
        done = subprocess.run([sys.executable, "-m", "gptcli", *args], cwd=base, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr

    gptcli("train", "corpus.txt", *TINY, "--vocab-size", "300", "--max-steps", "6", "--eval-interval", "3",
           "--out", "run")
    gptcli("export-hf", "run", "hf")
    shutil.copytree(base / "run", base / "keep")
    (base / "notes").mkdir()
    (base / "notes" / "mine.txt").write_text("my own notes, not a run\n")
