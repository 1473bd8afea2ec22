"""Shared fixtures: a small corpus, an isolated workspace and token cache, tiny shapes.
Helpers that tests import live in helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import SHAKESPEARE, TINY_FLAGS, copy_trained, train_once


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


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory, shakespeare_text) -> Path:
    """One tiny run trained for 20 steps through the real CLI, once per session (training
    is deterministic: every test would train the same bytes); `trained_run` copies it."""
    return train_once(tmp_path_factory.mktemp("trained"), "corpus.txt", shakespeare_text[:30000],
                      *TINY_FLAGS, "--max-steps", "20", "--out", "run")


@pytest.fixture
def trained_run(isolated, small_corpus, trained_template) -> Path:
    """A tiny run folder trained for 20 steps through the real CLI, at ./run (the session's,
    copied in with the workspace tokenizer and token cache its training made)."""
    copy_trained(trained_template, isolated)
    return isolated / "run"
