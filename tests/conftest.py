"""Shared fixtures: a small corpus, an isolated workspace and token cache, tiny shapes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO / "gptcli" / "assets" / "tinyshakespeare.txt"

# A model small enough that a CLI training run takes a second or two.
TINY_FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32",
              "--batch-size", "4", "--eval-iters", "2", "--log-interval", "1", "--vocab-size", "300"]


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test runs in its own workspace folder with its own token cache."""
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.chdir(ws)
    monkeypatch.setenv("GPTCLI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("NO_COLOR", "1")
    return ws


@pytest.fixture(scope="session")
def shakespeare_text() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture
def small_corpus(isolated, shakespeare_text) -> Path:
    """About 30 KB of Shakespeare in the workspace."""
    path = isolated / "corpus.txt"
    path.write_text(shakespeare_text[:30000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def mixed_tokenizer(shakespeare_text):
    """A small tokenizer trained on English, CJK, emoji and control characters."""
    from gptcli.tokenizer import BPETokenizer

    extra = "日本語のテキストと中文文本。🙂🚀👩‍💻 naïve café\r\n\tTabs\tand  spaces  "
    return BPETokenizer.train([shakespeare_text[:50000], extra * 50], 600)


def run_gptcli(*args: str, input: bytes | None = None, cwd: Path | None = None, timeout: float = 120,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """The real command, in a subprocess, as a user runs it."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "gptcli", *args], input=input, capture_output=True,
                          cwd=cwd, timeout=timeout, env=full_env)


@pytest.fixture
def trained_run(isolated, small_corpus, monkeypatch, capsys):
    """A tiny run folder trained for 20 steps through the real CLI, at ./run."""
    from test_cli import cli

    code, _, err = cli(monkeypatch, capsys, "train", str(small_corpus), *TINY_FLAGS, "--max-steps", "20", "--out", "run")
    assert code == 0, err
    return isolated / "run"
