"""The generation engine and the Python API on it, used as a program would use them:
`gptcli.load` gives the CLI's outputs, streams what it generates, scores as `gptcli eval`
does, raises the CLI's errors, and serves several threads at once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

import gptcli
from gptcli.errors import SettingError, UsageError

from helpers import cli

PROMPT = "First Citizen:"


def test_generate_gives_what_the_cli_prints(trained_run, monkeypatch, capsys):
    g = gptcli.load("run")
    for flags, settings in ((["--greedy"], {"greedy": True}), (["--seed", "3"], {"seed": 3}),
                            (["--beams", "3"], {"num_beams": 3}), (["--seed", "4", "--min-p", "0.1"],
                                                                   {"seed": 4, "min_p": 0.1})):
        code, out, err = cli(monkeypatch, capsys, "generate", "-c", "run", "-p", PROMPT, "-n", "24", *flags)
        assert code == 0, err
        assert g.generate(PROMPT, max_new_tokens=24, **settings) == out


def test_stream_pieces_join_to_the_generated_text(trained_run):
    g = gptcli.load("run")
    pieces = list(g.stream(PROMPT, max_new_tokens=40, seed=5))
    assert len(pieces) > 1
    assert "".join(pieces) == g.generate(PROMPT, max_new_tokens=40, seed=5)


def test_complete_reports_ids_finish_reasons_and_one_output_per_sample(trained_run):
    g = gptcli.load("run")
    outs = g.complete(["A", "B"], max_new_tokens=12, num_samples=2, seed=1)
    assert [(o.prompt, o.sample) for o in outs] == [("A", 0), ("A", 1), ("B", 0), ("B", 1)]
    for o in outs:
        assert o.finish_reason in ("length", "eos") and len(o.token_ids) <= 12
        assert g.tokenizer.decode(o.token_ids) == o.text
    first = outs[0].text
    cut = g.complete("A", max_new_tokens=12, num_samples=2, seed=1, stop=first[2:4])[0]
    assert cut.finish_reason == "stop" and cut.text == first[:first.index(first[2:4])]
    assert g.generate(["A", "B"], max_new_tokens=12, seed=1) == [outs[0].text, outs[2].text]


def test_score_equals_gptcli_eval(trained_run, monkeypatch, capsys, shakespeare_text):
    text = shakespeare_text[40000:43000]
    (trained_run.parent / "held.txt").write_text(text, encoding="utf-8")
    code, out, err = cli(monkeypatch, capsys, "eval", "held.txt", "-c", "run", "--json")
    assert code == 0, err
    want = json.loads(out)
    got = gptcli.load("run").score(text)
    assert got.tokens == want["tokens"]
    assert got.bits_per_byte == pytest.approx(want["bits_per_byte"], rel=1e-6)
    assert got.loss == pytest.approx(want["loss"], rel=1e-6)


def test_errors_are_the_clis_as_exceptions(trained_run, tmp_path):
    with pytest.raises(UsageError, match="no such run folder"):
        gptcli.load(tmp_path / "nowhere")
    with pytest.raises(SettingError, match="dtype must be"):
        gptcli.load("run", dtype="bf16")
    g = gptcli.load("run")
    with pytest.raises(SettingError, match="temperature must be"):
        g.generate(PROMPT, temperature=-1)
    with pytest.raises(SettingError, match="num_beams 2 searches, it does not sample: drop temperature"):
        g.generate(PROMPT, num_beams=2, temperature=0.5)
    with pytest.raises(UsageError, match="unknown setting 'max_tokens'"):
        g.generate(PROMPT, max_tokens=5)
    with pytest.raises(UsageError, match="one output"):
        g.stream(PROMPT, num_samples=2)  # at the call, before any piece is asked for
    with pytest.raises(UsageError, match="not valid UTF-8"):
        g.generate("\udcff")
    with pytest.raises(SettingError, match="stop must be a list of strings, got 123"):
        g.generate(PROMPT, stop=123)
    with pytest.raises(SettingError, match="num_beams must be an integer, got '4'"):
        g.generate(PROMPT, num_beams="4")
    with pytest.raises(UsageError, match="greedy must be true or false"):
        g.generate(PROMPT, greedy="no")
    with pytest.raises(UsageError, match="prompts must be a string or a list of strings"):
        g.complete(None)
    with pytest.raises(UsageError, match="a prompt must be a string, got bytes"):
        g.generate([b"x"])
    for _ in range(2):  # a refused request leaves nothing behind that changes the next
        with pytest.raises(SettingError, match="batch_size must be"):
            g.complete(["A", "B"], batch_size=0, max_new_tokens=3)
    assert g.generate([], max_new_tokens=3) == []
    with pytest.raises(SettingError, match="stride must be"):
        g.score("some text", stride=0)
    with pytest.raises(UsageError, match="score\\(\\) takes text"):
        g.score(None)
    with pytest.raises(UsageError, match="--threads must be between 1 and"):
        gptcli.load("run", threads="2")


def test_threads_share_one_engine_and_get_what_they_would_alone(trained_run):
    """Four threads at once on a fresh engine (its int8 matrices prepared under their
    race), each with its own strategy, get exactly the outputs of the same calls made
    one after another afterwards."""
    g = gptcli.load("run", dtype="int8", device="cpu")
    calls = [dict(prompt="A", max_new_tokens=30, seed=1), dict(prompt="B", max_new_tokens=30, greedy=True),
             dict(prompt="C", max_new_tokens=20, num_beams=3), dict(prompt="D", max_new_tokens=30, seed=2)]
    results, errors = [None] * len(calls), []
    start = threading.Barrier(len(calls))

    def work(i):
        try:
            start.wait()
            results[i] = g.generate(**calls[i])
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert results == [g.generate(**c) for c in calls]


def test_importing_gptcli_loads_no_torch():
    code = "import sys, gptcli; print('torch' in sys.modules, callable(gptcli.load))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
