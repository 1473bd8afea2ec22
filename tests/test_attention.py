"""`gptcli attention`: the weights are softmax(QK^T/sqrt(d) + causal mask) of the real
forward pass, and the views (terminal, JSON, PNG) show them; bad input is refused."""

from __future__ import annotations

import json

import pytest
import torch

from gptcli.attention import KeptAttention, attention_maps
from gptcli.config import ModelConfig
from gptcli.model import GPT

from helpers import assert_clean_error, cli


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**dict(vocab_size=300, block_size=24, n_layer=3, n_head=2, n_embd=32), **kw})).eval()


def test_rows_are_distributions_over_the_past_only():
    maps = attention_maps(tiny(), torch.randint(0, 300, (20,)))
    assert maps.shape == (3, 2, 20, 20)
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, 2, 20), rtol=0, atol=1e-6)
    assert bool((maps.triu(diagonal=1) == 0).all())  # nothing attends to the future


def test_the_kept_weights_are_the_forward_passes_own():
    """The forward run with the explicit attention (weights times values) gives the
    normal forward's hidden states: the maps are the weights the model really uses."""
    model = tiny(bias=True)
    idx = torch.randint(0, 300, (1, 20))
    kept = KeptAttention()
    with torch.no_grad():
        torch.testing.assert_close(model.hidden(idx, attend=kept), model.hidden(idx), rtol=0, atol=1e-5)
    assert len(kept.weights) == 3 and kept.weights[0].shape == (1, 2, 20, 20)


def test_json_nests_layers_heads_queries_keys_and_narrows(trained_run, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "attention", "-c", "run", "-p", "First Citizen:", "--json")
    assert code == 0, err
    d = json.loads(out)
    T = len(d["token_ids"])
    assert len(d["tokens"]) == T > 1 and d["layers"] == [0] and d["heads"] == [0, 1]
    assert [len(d["attention"]), len(d["attention"][0]), len(d["attention"][0][0]), len(d["attention"][0][0][0])] \
        == [1, 2, T, T]
    code, out, _ = cli(monkeypatch, capsys, "attention", "-c", "run", "-p", "First Citizen:", "--json", "--head", "1")
    d = json.loads(out)
    assert d["heads"] == [1] and len(d["attention"][0]) == 1


def test_terminal_view_lists_the_strongest_keys_with_visible_whitespace(trained_run, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "attention", "-c", "run", "-p", "First Citizen:\nBefore we", "--top", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("layer 0, mean over heads") and len(lines) > 3
    assert "↵" in out and "␣" in out  # a newline and spaces are visible
    first = lines[1].split()
    assert first[0] == "0" and first[-1] == "1.00"  # the first token can only attend to itself


def test_png_is_a_real_image(trained_run, monkeypatch, capsys):
    from matplotlib.image import imread

    code, _, err = cli(monkeypatch, capsys, "attention", "-c", "run", "-p", "First Citizen: we", "--out", "a.png")
    assert code == 0, err
    assert (trained_run.parent / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(trained_run.parent / "a.png").shape
    assert height > 200 and width > 200


@pytest.mark.parametrize("args, message", [
    (["--layer", "1"], "--layer must be between 0 and 0"),
    (["--head", "2"], "--head must be between 0 and 1"),
    (["--layer", "-1"], "--layer"),
    (["--top", "0"], "--top"),
    (["-p", ""], "the prompt is empty"),
    (["-c", "nowhere"], "no such run folder"),
])
def test_bad_attention_input(trained_run, monkeypatch, capsys, args, message):
    if "-p" not in args:
        args = [*args, "-p", "hi"]
    if "-c" not in args:
        args = ["-c", "run", *args]
    code, out, err = cli(monkeypatch, capsys, "attention", *args)
    assert_clean_error(code, out, err, match=message)


def test_a_prompt_longer_than_the_context_keeps_its_end_with_a_warning(trained_run, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "attention", "-c", "run", "-p", "word " * 100, "--json")
    assert code == 0 and "keeping its last 32 tokens" in err
    assert len(json.loads(out)["token_ids"]) == 32


def test_out_follows_the_output_policy(isolated, monkeypatch, capsys):
    """A FIFO stays a FIFO, an existing file is kept without --overwrite, and the model
    being read is never written over, even with it."""
    import os
    import stat

    from gptcli import workspace

    os.mkfifo(isolated / "fifo")
    (isolated / "old.png").write_text("keep")
    for target, extra, match in (("fifo", [], "is a FIFO, not a regular file"),
                                 ("old.png", [], "old.png exists: pass --overwrite"),
                                 (str(workspace.SHIPPED / "model.safetensors"), ["--overwrite"],
                                  "is a file this command reads")):
        code, out, err = cli(monkeypatch, capsys, "attention", "-p", "ROMEO:", "--out", target, *extra)
        assert_clean_error(code, out, err, match=match)
    assert stat.S_ISFIFO((isolated / "fifo").lstat().st_mode) and (isolated / "old.png").read_text() == "keep"
    code, _, err = cli(monkeypatch, capsys, "attention", "-p", "ROMEO:", "--out", "old.png", "--overwrite")
    assert code == 0, err
    assert (isolated / "old.png").read_bytes()[:4] == b"\x89PNG"
