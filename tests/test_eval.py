"""`gptcli eval`: figures checked by hand, windows that give every token context,
agreement with the training loop, and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gptcli.scoring import sliding_windows as windows

from helpers import TINY_FLAGS, assert_clean_error, cli


@pytest.fixture
def run(trained_run):
    return trained_run


def test_bits_per_byte_matches_a_hand_computation(run, monkeypatch, capsys):
    from gptcli.store.checkpoint import load_run

    text = "To be, or not to be: that is the question. 🙂"
    (run.parent / "q.txt").write_text(text, encoding="utf-8")
    code, out, err = cli(monkeypatch, capsys, "eval", "q.txt", "-c", str(run), "--json")
    assert code == 0, err
    got = json.loads(out)
    model, tok, _ = load_run(run)
    ids = torch.tensor([[tok.eot_id] + tok.encode(text)])
    assert ids.shape[1] <= model.config.block_size + 1  # one window: a plain forward pass is the reference
    with torch.no_grad():
        logits, _ = model(ids[:, :-1])
    logp = logits[0].log_softmax(-1)
    targets = ids[0, 1:]
    nats = -float(logp[torch.arange(len(targets)), targets].sum())
    assert got["tokens"] == len(targets) and got["bytes"] == len(text.encode("utf-8"))
    assert got["loss"] == pytest.approx(nats / len(targets), rel=1e-5)
    assert got["bits_per_byte"] == pytest.approx(nats / math.log(2) / len(text.encode("utf-8")), rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(nats / len(targets)), rel=1e-5)
    assert got["accuracy"] == pytest.approx(float((logp.argmax(-1) == targets).float().mean()))
    assert set(got) >= {"tokens", "loss", "perplexity", "bits_per_byte", "accuracy", "stride", "checkpoint"}


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 400), block=st.integers(1, 64), data=st.data())
def test_windows_score_every_token_once_with_context(n, block, data):
    stride = data.draw(st.integers(1, block))
    scored = []
    for begin, end, first in windows(n, block, stride):
        assert end - begin <= block + 1 and begin < first <= end
        for t in range(first, end):
            scored.append(t)
            context = t - begin
            assert context >= min(t, block + 1 - stride)  # everything before t, or a full stride's worth
    assert scored == list(range(1, n))


def test_eval_agrees_with_the_training_loops_validation_figure(isolated, small_corpus, shakespeare_text,
                                                               monkeypatch, capsys):
    (isolated / "val.txt").write_text(shakespeare_text[-3000:], encoding="utf-8")
    code, _, err = cli(monkeypatch, capsys, "train", str(small_corpus), *TINY_FLAGS, "--max-steps", "8",
                       "--eval-interval", "4", "--eval-iters", "20", "--val", "val.txt", "--out", "run",
                       "--dtype", "float32")  # bf16 autocast evaluates in bf16: then they agree to ~1e-5
    assert code == 0, err
    doc = json.loads((isolated / "run" / "config.json").read_text())["training"]
    code, out, _ = cli(monkeypatch, capsys, "eval", "val.txt", "-c", "run", "--stride", "32", "--json")
    assert json.loads(out)["bits_per_byte"] == pytest.approx(doc["best_val_bpb"], rel=1e-6)


def test_plain_output_lists_the_figures(run, monkeypatch, capsys, small_corpus):
    code, out, _ = cli(monkeypatch, capsys, "eval", str(small_corpus), "-c", str(run))
    assert code == 0
    for word in ("tokens", "loss", "perplexity", "bits per byte", "accuracy"):
        assert word in out


@pytest.mark.parametrize("args, message", [
    (["empty.txt"], "empty"),
    (["corpus.txt", "--stride", "33"], "--stride"),
    (["corpus.txt", "--stride", "0"], "--stride"),
    (["corpus.txt", "-c", "nowhere"], "no such run folder"),
    (["missing.txt"], "no such file"),
    (["corpus.txt", "--batch-size", "0"], "--batch-size"),
])
def test_bad_eval_input(run, monkeypatch, capsys, args, message):
    (run.parent / "empty.txt").write_text("")
    if "-c" not in args:
        args = [*args, "-c", str(run)]
    code, out, err = cli(monkeypatch, capsys, "eval", *args)
    assert_clean_error(code, out, err, match=message)
