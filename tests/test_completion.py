"""Shell completion, run in a real bash: the script `gptcli --show-completion` prints is
sourced, and bash's own completion function (and a real Tab key, on a pseudo-terminal)
offers commands, flags, presets, --dtype values and the run folders under ./checkpoints."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from helpers import REPO

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.fixture
def shell(tmp_path):
    """A workspace with a `gptcli` on PATH that runs this checkout, two runs under
    ./checkpoints and a folder that is not one, and the bash completion script."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "gptcli"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m gptcli "$@"\n')
    wrapper.chmod(0o755)
    for name in ("shakespeare-1", "shakespeare-2"):
        (tmp_path / "checkpoints" / name).mkdir(parents=True)
        (tmp_path / "checkpoints" / name / "config.json").write_text("{}")
    (tmp_path / "checkpoints" / "scratch").mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO), "HOME": str(tmp_path)}
    script = subprocess.run(["bash", "-c", "gptcli --show-completion"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert script.returncode == 0, script.stderr
    assert "complete -o default -F _gptcli_completion gptcli" in script.stdout
    (tmp_path / "completion.bash").write_text(script.stdout)
    return tmp_path, env


def _complete(shell, *words: str) -> list[str]:
    """What bash's completion function for gptcli offers for the last word."""
    root, env = shell
    quoted = " ".join("'" + w + "'" for w in ("gptcli", *words))
    code = (f"source completion.bash; COMP_WORDS=({quoted}); COMP_CWORD={len(words)}; "
            "_gptcli_completion gptcli; printf '%s\\n' \"${COMPREPLY[@]}\"")
    r = subprocess.run(["bash", "--norc", "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if line]


def test_bash_completes_commands_flags_and_values(shell):
    assert _complete(shell, "tr") == ["train"]
    assert {"generate", "eval", "compare", "tokenizer"} <= set(_complete(shell, ""))
    assert _complete(shell, "tokenizer", "") == ["train", "encode", "decode"]
    assert "--text-field" in _complete(shell, "train", "--te")
    assert _complete(shell, "train", "--preset", "") == ["tiny", "small", "medium", "gpt2"]
    assert _complete(shell, "compare", "--preset", "sm") == ["small"]
    assert _complete(shell, "generate", "--dtype", "") == ["float32", "float16", "int8"]
    assert _complete(shell, "train", "--arch", "") == ["gpt", "lstm", "gru", "rnn"]
    assert _complete(shell, "generate", "-c", "") == ["checkpoints/shakespeare-1", "checkpoints/shakespeare-2"]
    assert _complete(shell, "eval", "x.txt", "--checkpoint", "checkpoints/shakespeare-2") == [
        "checkpoints/shakespeare-2"]


def test_a_tab_key_in_an_interactive_bash_completes(shell):
    pexpect = pytest.importorskip("pexpect")
    root, env = shell
    child = pexpect.spawn("bash", ["--norc", "--noprofile", "-i"], env={**env, "PS1": "$ "}, cwd=str(root),
                          encoding="utf-8", timeout=30)
    try:
        child.sendline("source completion.bash")
        child.expect_exact("$ ")
        child.send("gptcli generate --dty\t")
        child.expect_exact("--dtype ")
        child.send("int\t")
        child.expect_exact("int8 ")
        child.send("-c checkpoints/shakespeare-\t\t")  # two candidates: bash lists both
        child.expect("shakespeare-1.*shakespeare-2")
    finally:
        child.close(force=True)


def test_install_completion_adds_it_to_bashrc(shell):
    root, env = shell
    r = subprocess.run(["bash", "-c", "gptcli --install-completion"], env=env, cwd=root, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    installed = root / ".bash_completions" / "gptcli.sh"
    assert "_gptcli_completion" in installed.read_text()
    bashrc = (root / ".bashrc").read_text().splitlines()
    assert any(line.startswith("source ") and str(installed) in line for line in bashrc)


def test_help_stays_free_of_torch():
    code = "import sys; import gptcli.cli.app as a; from gptcli.cli import options; print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.stdout.strip() == "False", r.stderr


def test_run_names_with_a_newline_are_not_offered(shell):
    root, _ = shell
    (root / "checkpoints" / "two\nlines").mkdir()
    (root / "checkpoints" / "two\nlines" / "config.json").write_text("{}")
    assert _complete(shell, "generate", "-c", "") == ["checkpoints/shakespeare-1", "checkpoints/shakespeare-2"]


@pytest.mark.parametrize("setup, message", [
    (lambda h: ((h / ".bash_completions").mkdir(), (h / ".bash_completions" / "gptcli.sh").symlink_to(h / "victim")),
     "is a symbolic link"),
    (lambda h: os.mkfifo(h / ".bashrc"), ".bashrc is not a regular file"),
    (lambda h: (h / ".bash_completions").write_text("a file in the way"), "gptcli.sh: Not a directory"),
])
def test_install_refuses_links_fifos_and_files_in_the_way(shell, setup, message):
    root, env = shell
    (root / "victim").write_text("precious")
    setup(root)
    r = subprocess.run(["bash", "-c", "gptcli --install-completion"], env=env, cwd=root, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert (root / "victim").read_text() == "precious"


def test_install_twice_adds_its_line_once(shell):
    root, env = shell
    (root / ".bashrc").write_text("alias ll='ls -l'")  # no newline at the end
    for _ in range(2):
        r = subprocess.run(["bash", "-c", "gptcli --install-completion"], env=env, cwd=root, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    lines = (root / ".bashrc").read_text().splitlines()
    assert lines[0] == "alias ll='ls -l'" and sum(line.startswith("source ") for line in lines) == 1
