"""The recurrent family (RNN, LSTM, GRU) beside GPT: sized like a GPT preset, decoded
step by step with its state, trained, resumed, generated from and compared."""

from __future__ import annotations

import json

import pytest
import torch

from gptcli.architectures import build, param_count
from gptcli.commands.train_plan import matched_shape, settings_for
from gptcli.config import PRESETS, ModelConfig, SampleConfig
from gptcli.generation.decoders import RecurrentDecoder
from gptcli.generation.search import beam_search, decode_steps

from helpers import TINY_FLAGS, assert_clean_error, cli

RECURRENT = ["lstm", "gru", "rnn"]
FLAGS = TINY_FLAGS[:2] + TINY_FLAGS[4:]  # TINY_FLAGS without --n-head: a recurrent model has no heads
assert "--n-head" not in FLAGS


def tiny(arch: str, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(arch=arch, vocab_size=300, block_size=16, n_layer=2, n_head=1, n_embd=24), **kw})
    return build(cfg.validate()).eval()


@pytest.mark.parametrize("arch", RECURRENT)
@pytest.mark.parametrize("preset", list(PRESETS))
def test_a_preset_means_the_parameter_count_of_its_gpt(arch, preset):
    model_cfg, _ = settings_for(preset, {"arch": arch, "vocab_size": 4096})
    matched = matched_shape(model_cfg, preset, {"arch": arch})
    gpt, _ = settings_for(preset, {"vocab_size": 4096})
    assert matched.n_layer == gpt.n_layer  # the preset's depth; the width is solved for
    assert abs(param_count(matched) / param_count(gpt) - 1) <= 0.10
    assert param_count(matched) == build(matched).num_params()


@pytest.mark.parametrize("arch", RECURRENT)
def test_step_by_step_decoding_with_the_state_equals_the_full_forward(arch):
    model = tiny(arch)
    idx = torch.randint(0, 300, (3, 40))  # past block_size: a recurrent model has no context limit
    decoder = RecurrentDecoder(model)
    with torch.no_grad():
        full, _ = model(idx)
        got = [decoder.prefill(idx[:, :5].tolist())]
        got += [decoder.step(idx[:, t]) for t in range(5, 40)]
    torch.testing.assert_close(torch.stack(got, dim=1), full[:, 4:], rtol=0, atol=1e-5)
    assert not decoder.full


@pytest.mark.parametrize("arch", RECURRENT)
def test_prompts_of_different_lengths_decode_as_they_would_alone(arch):
    model = tiny(arch)
    short, long_ = [5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8]
    with torch.no_grad():
        both = RecurrentDecoder(model)
        first = both.prefill([short, long_])
        nxt = both.step(torch.tensor([9, 9]))
        alone = RecurrentDecoder(model)
        torch.testing.assert_close(alone.prefill([short])[0], first[0], rtol=0, atol=1e-5)
        torch.testing.assert_close(alone.step(torch.tensor([9]))[0], nxt[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", RECURRENT)
def test_beam_search_with_one_beam_is_greedy_and_reorders_state_rows(arch):
    model = tiny(arch)
    greedy = SampleConfig(strategy="greedy", max_new_tokens=20)
    with torch.inference_mode():
        ids = [s[0][0] for s in decode_steps(model, [[1, 2, 3]], greedy, -1)]
        one = beam_search(model, [1, 2, 3], SampleConfig(strategy="beam", num_beams=1, max_new_tokens=20), -1)
        four = beam_search(model, [1, 2, 3], SampleConfig(strategy="beam", num_beams=4, max_new_tokens=20,
                                                          num_return=4), -1)
    assert one[0].tokens == ids
    assert four[0].score >= four[1].score >= four[2].score >= four[3].score
    assert four[0].logprob >= one[0].logprob - 1e-4  # four beams find at least greedy's sequence score


@pytest.mark.parametrize("arch", RECURRENT)
def test_every_command_works_for_a_recurrent_run(arch, small_corpus, monkeypatch, capsys):
    code, _, err = cli(monkeypatch, capsys, "train", str(small_corpus), *FLAGS, "--arch", arch, "--max-steps", "4",
                       "--eval-interval", "2", "--out", "r")
    assert code == 0, err
    doc = json.loads((small_corpus.parent / "r/config.json").read_text())
    assert doc["model"]["arch"] == arch
    assert cli(monkeypatch, capsys, "train", "--resume", "r", "--max-steps", "6")[0] == 0
    for args in (["-n", "40", "--greedy"], ["-n", "10", "--seed", "1"], ["-n", "8", "--beams", "3", "--num-return", "2",
                                                                          "--json"]):
        code, out, err = cli(monkeypatch, capsys, "generate", "-c", "r", "-p", "First", *args)
        assert code == 0 and out, err
    code, out, _ = cli(monkeypatch, capsys, "eval", str(small_corpus), "-c", "r", "--json")
    assert code == 0 and json.loads(out)["bits_per_byte"] > 0
    code, out, _ = cli(monkeypatch, capsys, "info", "r")
    assert code == 0 and f"{arch}, 1 layers" in out
    for args, message in ((["export-hf", "r", "hf"], "only a gpt model is one"),
                          (["attention", "-c", "r", "-p", "hi"], "attention maps need a GPT")):
        code, out, err = cli(monkeypatch, capsys, *args)
        assert_clean_error(code, out, err, match=message)


def test_positions_and_heads_are_refused_for_a_recurrent_arch(small_corpus, monkeypatch, capsys):
    for flag, value in (("--pos-encoding", "sinusoidal"), ("--n-head", "2"), ("--attn-dropout", "0.1")):
        code, out, err = cli(monkeypatch, capsys, "train", str(small_corpus), "--arch", "gru", flag, value)
        assert_clean_error(code, out, err, match="does not apply to --arch gru")


COMPARE = ["--n-layer", "1", "--block-size", "32", "--batch-size", "4", "--eval-iters", "2", "--log-interval", "1",
           "--vocab-size", "300", "--max-steps", "4", "--eval-interval", "2"]


def _is_png(path) -> tuple[int, int]:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    height, width, _ = imread(path).shape
    return height, width


def test_compare_trains_every_arch_at_the_same_size_and_draws_both_figures(small_corpus, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "compare", str(small_corpus), *COMPARE, "--out", "cmp", "--json")
    assert code == 0, err
    summary = json.loads((small_corpus.parent / "cmp/summary.json").read_text())
    assert json.loads(out) == summary
    records = {r["arch"]: r for r in summary["archs"]}
    assert list(records) == ["gpt", "lstm", "gru", "rnn"]
    for r in records.values():
        assert abs(r["params"] / records["gpt"]["params"] - 1) <= 0.10, r
        assert r["tokens_seen"] == records["gpt"]["tokens_seen"]  # the same budget of steps and batches
        assert len(r["loss_by_position"]) == 32 and r["best_val_bpb"] > 0 and r["generate_tokens_per_second"] > 0
        assert r["val_bpb_at_equal_tokens"] is not None and r["sample"]
        config = json.loads((small_corpus.parent / "cmp" / r["arch"] / "config.json").read_text())
        assert config["training"]["config"]["optimizer"] == "adamw"  # one recipe for all, GPT included
    assert summary["equal_tokens"] == 4 * 4 * 32
    for name in ("curves.png", "position.png"):
        height, width = _is_png(small_corpus.parent / "cmp" / name)
        assert height > 300 and width > 400
    code, out, _ = cli(monkeypatch, capsys, "generate", "-c", "cmp/lstm", "-p", "First", "-n", "5", "--greedy")
    assert code == 0 and out  # each arch's folder is an ordinary run folder


def test_compare_table_and_bad_input(small_corpus, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "compare", str(small_corpus), *COMPARE, "--arch", "gpt", "--arch", "rnn",
                         "--out", "cmp")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["arch", "params", "train"] and [ln.split()[0] for ln in lines[1:]] == ["gpt", "rnn"]
    for args, message in ((["--arch", "transformer"], "--arch transformer is not one of"),
                          (["--n-embd", "64"], "takes no --n-embd"),
                          (["--out", "cmp"], "not empty")):
        code, out, err = cli(monkeypatch, capsys, "compare", str(small_corpus), *COMPARE[:-4], *args)
        assert_clean_error(code, out, err, match=message)
    code, out, err = cli(monkeypatch, capsys, "compare", "-", stdin=b"some text")
    assert_clean_error(code, out, err, match="save stdin to a file")


def test_plot_draws_a_run_and_refuses_a_folder_without_metrics(trained_run, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "plot", "run", "--out", "c.png", "--json")
    assert code == 0, err
    series = json.loads(out)["runs"]["run"]
    assert series["train_step"] == list(range(1, 21)) and len(series["val_bpb"]) >= 1
    height, width = _is_png(trained_run.parent / "c.png")
    assert width > 1000 and height > 500
    (trained_run.parent / "empty").mkdir()
    code, out, err = cli(monkeypatch, capsys, "plot", "empty")
    assert_clean_error(code, out, err, match="has no metrics.jsonl")
    from gptcli.commands.plot import PlotRequest, run

    chart = run(PlotRequest([trained_run], trained_run.parent / "d.png")).terminal(60, 12)
    assert "validation bits per byte" in chart and len(chart.splitlines()) >= 10


def test_plot_streams_long_metrics_under_a_cap_and_names_a_record_it_cannot_draw(trained_run, monkeypatch, capsys):
    from gptcli import plots

    monkeypatch.setattr(plots, "MAX_POINTS", 4)
    code, out, err = cli(monkeypatch, capsys, "plot", "run", "--out", "c.png", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["runs"]["run"]["train_step"] == [1, 9, 17, 20] and doc["thinned"] == {"run": {"train": 8}}
    assert "plotting run: 1 in 8 train records, and the last" in err
    metrics = trained_run / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"type": "train", "step": 21}\n')
    code, out, err = cli(monkeypatch, capsys, "plot", "run", "--out", "d.png")
    assert_clean_error(code, out, err, match="metrics.jsonl line")
    assert "has no 'tokens'" in err
