"""--threads on every command that computes, its bad values, and the wait policy that
keeps a shared CPU from stalling the threads (gptcli/threads.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from gptcli import threads
from gptcli.errors import UsageError

from helpers import assert_clean_error, cli, run_gptcli

COMMANDS = {  # a command's arguments, and the module whose run() it calls
    "train": (["train", "corpus.txt"], "gptcli.commands.train"),
    "generate": (["generate", "-p", "hi"], "gptcli.commands.generate"),
    "eval": (["eval", "corpus.txt"], "gptcli.commands.eval"),
    "compare": (["compare", "corpus.txt"], "gptcli.commands.compare"),
    "attention": (["attention", "-p", "hi"], "gptcli.commands.attention"),
}


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_threads_is_what_the_command_computes_with(monkeypatch, capsys, keep_threads, small_corpus, name):
    import importlib

    args, module = COMMANDS[name]
    seen = []

    def run(*a, **k):
        seen.append(torch.get_num_threads())
        raise UsageError("seen")  # the command stops here, with what it saw

    monkeypatch.setattr(importlib.import_module(module), "run", run)
    for n in (1, threads.usable_cpus()):
        code, _, err = cli(monkeypatch, capsys, *args, "--threads", str(n))
        assert code == 2 and "error: seen" in err, err
    assert seen == [1, threads.usable_cpus()]


@pytest.mark.parametrize("value", ["0", "-1", str(10**9), "abc", "1.5", ""])
@pytest.mark.parametrize("name", ["train", "generate", "eval"])
def test_a_bad_thread_count_is_one_line_and_exit_2(monkeypatch, capsys, small_corpus, name, value):
    code, out, err = cli(monkeypatch, capsys, *COMMANDS[name][0], "--threads", value)
    assert_clean_error(code, out, err, match="--threads")


def test_a_bad_thread_count_as_a_user_runs_it():
    for value in ("0", str(10**9), "abc"):
        proc = run_gptcli("generate", "-p", "hi", "--threads", value)
        assert_clean_error(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), match="--threads")
    proc = run_gptcli("tokenizer", "train", "x.txt", "--threads", "0")
    assert_clean_error(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), match="--threads")


def _policy_in_a_fresh_process(env: dict | None = None, busy: bool = False, others: int | None = None) -> str:
    fake = f"threads.others_running = lambda: {others}\n" if others is not None else ""
    code = ("import os\nfrom gptcli import threads\n" + fake + "threads.use(None)\n"
            "import sys\nassert 'torch' in sys.modules\nprint(os.environ.get('OMP_WAIT_POLICY', 'unset'))")
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if loop:
            time.sleep(0.3)
        clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={**clean, **(env or {})})
    finally:
        if loop:
            loop.kill()
            loop.wait()
    return done.stdout.strip()


def test_threads_wait_passively_when_the_cpu_is_shared_at_the_start_and_the_users_choice_wins():
    assert _policy_in_a_fresh_process(busy=True) == "PASSIVE"  # set before torch loaded
    assert _policy_in_a_fresh_process({"OMP_WAIT_POLICY": "ACTIVE"}, busy=True) == "ACTIVE"
    # the load's reading faked both ways (a test machine is seldom idle): alone they spin
    assert _policy_in_a_fresh_process(others=0) == "unset"
    assert _policy_in_a_fresh_process(others=2) == "PASSIVE"


def test_others_running_sees_a_busy_process():
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert threads.others_running() >= 1
    finally:
        loop.kill()
        loop.wait()
