"""The hostile suite: gptcli run as a process against hostile files, flags, streams,
signals and concurrency (cases.py), each judged by the same rules (harness.judge)."""

from __future__ import annotations

import collections
import shutil

import cases as table
import pytest
from harness import Zygote, judge, prepare, run_case

from helpers import REPO

ALL = table.all_cases()


@pytest.fixture(scope="session")
def hostile_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile") / "base"
    prepare(base)
    table.BASE = base
    return base


@pytest.fixture(scope="session")
def zygote():
    z = Zygote(REPO)
    yield z
    z.close()


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=() if c.name in table.QUICK else pytest.mark.slow)
                                  for c in ALL])
def test_hostile_case(case, hostile_base, zygote, tmp_path):
    ws = tmp_path / "case"
    shutil.copytree(hostile_base, ws, symlinks=True)
    if case.setup:
        case.setup(ws)
    judge(case, run_case(case, ws, zygote), ws)


def test_the_suite_covers_every_class_with_enough_cases():
    names = [c.name for c in ALL]
    assert len(names) == len(set(names)), [n for n, k in collections.Counter(names).items() if k > 1]
    assert len(ALL) >= 370, len(ALL)
    assert len(table.round3.cases()) >= 100 and all(len(g) >= 3 for g in table.round3.GROUPS.values())
    classes = collections.Counter(c.cls for c in ALL)
    assert set(classes) == {"data-loss", "corrupt-state", "hang", "memory", "streams", "bad-input"}, classes
    assert table.QUICK <= set(names)


@pytest.mark.slow
@pytest.mark.parametrize("shell, code, message", [
    ("gptcli info run >&-", 2, "error: stdout is closed"),
    ("gptcli info run > /dev/full", 1, "error: cannot write to stdout: No space left on device"),
    ("gptcli info run 2>&- > out.txt; test -s out.txt", 0, ""),
    ("gptcli info run --json | head -c 10 > /dev/null; exit ${PIPESTATUS[0]}", 0, ""),
    ("echo -n '' | gptcli tokenizer decode --tokenizer run <&-", 2, "error: stdin is closed"),
])
def test_a_real_shell_sees_what_the_forked_cases_see(hostile_base, tmp_path, shell, code, message):
    """The zygote forks children; these are exec'd by a real shell, as a user runs them."""
    import os
    import subprocess
    import sys

    ws = tmp_path / "case"
    shutil.copytree(hostile_base, ws, symlinks=True)
    gptcli = f"{sys.executable} -m gptcli"
    proc = subprocess.run(["bash", "-c", shell.replace("gptcli", gptcli)], cwd=ws, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "GPTCLI_CACHE_DIR": str(ws / ".cache")})
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    if message:
        assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr
