"""Helpers the test modules share: run gptcli as users do (in-process through its real
entry point, or as a subprocess) and check what a bad input must look like."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gptcli.cli.app import main

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "gptcli" / "assets" / "tinyshakespeare.txt"

# A model small enough that a CLI training run takes a second or two.
TINY_FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
              "--batch-size", "4", "--eval-iters", "2", "--log-interval", "1", "--vocab-size", "300"]


def cli(monkeypatch, capsys, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    """gptcli's real entry point, in-process: returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["gptcli", *args])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    with pytest.raises(SystemExit) as exc:
        main()
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def train_once(root: Path, corpus: str, text: str, *args: str) -> Path:
    """`gptcli train ROOT/ws/CORPUS ARGS` through the real entry point, in-process, in a
    workspace of its own (ROOT/ws, token cache ROOT/cache), for copy_trained to hand to
    each test that needs the same run: training is deterministic, so each would train the
    same bytes."""
    ws = root / "ws"
    ws.mkdir()
    (ws / corpus).write_text(text, encoding="utf-8")
    out, err = (io.TextIOWrapper(io.BytesIO(), encoding="utf-8") for _ in range(2))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ws)
        mp.setenv("GPTCLI_CACHE_DIR", str(root / "cache"))
        mp.setenv("NO_COLOR", "1")
        mp.setattr(sys, "stdout", out)
        mp.setattr(sys, "stderr", err)
        mp.setattr(sys, "argv", ["gptcli", "train", str(ws / corpus), *args])
        with pytest.raises(SystemExit) as exc:
            main()
    err.seek(0)
    assert exc.value.code == 0, err.read()
    return root


def copy_trained(root: Path, ws: Path) -> None:
    """What train_once made (the corpus, run folder and workspace tokenizer, and the token
    cache) into test workspace `ws` (its cache: ws/../cache, as conftest's `isolated` sets),
    the absolute corpus paths recorded in it pointing at ws: the files training in ws
    would have written."""
    old = root / "ws"
    for entry in old.iterdir():
        if entry.is_dir():
            shutil.copytree(entry, ws / entry.name)
        elif not (ws / entry.name).exists():
            shutil.copy2(entry, ws / entry.name)
        else:
            assert (ws / entry.name).read_bytes() == entry.read_bytes(), entry.name
    cache = ws.parent / "cache"
    shutil.copytree(root / "cache", cache, dirs_exist_ok=True)
    for doc in [*ws.glob("*/config.json"), *(cache / "tokens").glob("*.json")]:
        text = doc.read_text(encoding="utf-8")
        if str(old) in text:
            doc.write_text(text.replace(str(old), str(ws)), encoding="utf-8")


def run_gptcli(*args: str, input: bytes | None = None, cwd: Path | None = None, timeout: float = 120,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """The real command, in a subprocess, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "gptcli", *args], input=input, capture_output=True,
                          cwd=cwd, timeout=timeout, env=full_env)


def assert_clean_error(code, out, err, expected_code=2, match=None):
    """One `error: ...` line, last on stderr (progress notes may precede it), nothing on
    stdout, no traceback, and the expected exit code."""
    assert code == expected_code, err
    assert "Traceback" not in err and out == ""
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and err.rstrip().splitlines()[-1] == errors[0], err
    if match:
        assert match in errors[0], errors[0]


def hold_lock(lock: Path) -> subprocess.Popen:
    """Another process holding a run folder's lock (as a writing gptcli would) until killed."""
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "os.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc
