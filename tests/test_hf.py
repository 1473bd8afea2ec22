"""Parity with Hugging Face transformers on the same weights: import (logits, greedy,
beam search), export (logits, greedy, tokenizer), round trip, and bad folders."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from helpers import TINY_FLAGS, assert_clean_error, cli

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from gptcli.config import ModelConfig, SampleConfig  # noqa: E402
from gptcli.generation.search import beam_search  # noqa: E402
from gptcli.store.checkpoint import load_run  # noqa: E402
from gptcli.store.hf_weights import hf_config  # noqa: E402
from gptcli.tokenizer import BPETokenizer  # noqa: E402

SHAPES = {  # odd on purpose: width not a power of two, 3 heads, vocab not a multiple of 64
    "w48-h3-v301": dict(n_embd=48, n_head=3, n_layer=2, vocab=301, tokenizer="json"),
    "w40-h5-v333-merges": dict(n_embd=40, n_head=5, n_layer=3, vocab=333, tokenizer="vocab+merges"),
    "w64-h4-v320": dict(n_embd=64, n_head=4, n_layer=2, vocab=320, tokenizer="json"),
}


def make_hf(folder, shakespeare_text, n_embd, n_head, n_layer, vocab, tokenizer, seed=0):
    tok = BPETokenizer.train([shakespeare_text[:60000]], vocab)
    assert tok.vocab_size == vocab
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_positions=256, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.eot_id, eos_token_id=tok.eot_id)
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # larger, non-trivial biases and gains, so every parameter matters
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder)
    if tokenizer == "json":
        tok.save(folder)
    else:
        tok.tok.model.save(str(folder))  # vocab.json + merges.txt
    return model, tok


@pytest.fixture(params=list(SHAPES))
def imported(request, tmp_path, shakespeare_text, monkeypatch, capsys):
    hf, tok = make_hf(tmp_path / "hf", shakespeare_text, **SHAPES[request.param])
    code, _, err = cli(monkeypatch, capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "run"))
    assert code == 0, err
    return hf, tok, tmp_path / "run"


def test_import_logits_equal_hf(imported):
    hf, _, run = imported
    ours, _, _ = load_run(run)
    worst = 0.0
    for seed in range(3):
        x = torch.randint(0, hf.config.vocab_size, (4, 100), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            worst = max(worst, (ours(x)[0] - hf(x).logits).abs().max().item())
    print(f"max abs logit difference: {worst:.2e}")
    assert worst <= 1e-4


def test_import_greedy_equals_hf_token_for_token(imported, monkeypatch, capsys):
    hf, tok, run = imported
    prompt = "KING RICHARD III:\nNow is the winter"
    code, out, err = cli(monkeypatch, capsys, "generate", "-c", str(run), "-p", prompt, "-n", "110", "--greedy",
                         "--json")
    assert code == 0, err
    record = json.loads(out)
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        hf_out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=110,
                             eos_token_id=tok.eot_id, pad_token_id=tok.eot_id)[0, ids.shape[1]:].tolist()
    ours = record["token_ids"] + ([tok.eot_id] if record["finish_reason"] == "eos" else [])
    assert ours == hf_out[:len(ours)]
    assert len(ours) == 110 or record["finish_reason"] == "eos"


@pytest.mark.parametrize("beams", [2, 4])
@pytest.mark.parametrize("length_penalty", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("early_stopping", [True, False])
def test_import_beam_search_equals_hf(tmp_path, shakespeare_text, monkeypatch, capsys, beams, length_penalty,
                                      early_stopping):
    hf, tok = make_hf(tmp_path / "hf", shakespeare_text, **SHAPES["w48-h3-v301"], seed=1)
    assert cli(monkeypatch, capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "run"))[0] == 0
    ours_model, _, _ = load_run(tmp_path / "run")
    prompt = tok.encode("ROMEO:\nO, she doth")
    n_return = beams
    cfg = SampleConfig(strategy="beam", num_beams=beams, length_penalty=length_penalty, early_stopping=early_stopping,
                       num_return=n_return, max_new_tokens=20)
    with torch.inference_mode():
        hyps = beam_search(ours_model, prompt, cfg, eot_id=-1)  # end-of-text disabled on both sides
        ids = torch.tensor([prompt])
        hf_out = hf.generate(ids, attention_mask=torch.ones_like(ids), num_beams=beams, do_sample=False,
                             length_penalty=length_penalty, early_stopping=early_stopping,
                             num_return_sequences=n_return, max_new_tokens=20, eos_token_id=None, pad_token_id=0,
                             output_scores=True, return_dict_in_generate=True)
    hf_seqs = hf_out.sequences[:, len(prompt):].tolist()
    assert [h.tokens for h in hyps] == hf_seqs
    torch.testing.assert_close(torch.tensor([h.score for h in hyps]), hf_out.sequences_scores.float(),
                               rtol=1e-4, atol=1e-4)


def test_export_loads_in_transformers_with_equal_logits_greedy_and_tokenizer(trained_run, monkeypatch, capsys):
    from transformers import AutoTokenizer

    code, _, err = cli(monkeypatch, capsys, "export-hf", str(trained_run), "exported")
    assert code == 0, err
    hf = GPT2LMHeadModel.from_pretrained("exported").eval()
    hf_tok = AutoTokenizer.from_pretrained("exported")
    ours, tok, _ = load_run(trained_run)
    x = torch.randint(0, tok.vocab_size, (3, 32))
    with torch.no_grad():
        assert (ours(x)[0] - hf(x).logits).abs().max().item() <= 1e-4
    prompt = "First Citizen:"  # plus 20 new tokens stays inside the 32-token context
    code, out, _ = cli(monkeypatch, capsys, "generate", "-c", str(trained_run), "-p", prompt, "-n", "20",
                       "--greedy", "--json")
    record = json.loads(out)
    ids = torch.tensor([tok.encode(prompt)])
    with torch.no_grad():
        hf_ids = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20,
                             pad_token_id=tok.eot_id)[0, ids.shape[1]:].tolist()
    ours_ids = record["token_ids"] + ([tok.eot_id] if record["finish_reason"] == "eos" else [])
    assert ours_ids == hf_ids[:len(ours_ids)]
    for text in ["To be, or not to be", "  leading spaces", "日本語 🙂\r\n\ttab", "<|endoftext|>after"]:
        assert hf_tok(text)["input_ids"] == tok.encode(text)
        assert hf_tok.decode(tok.encode(text)) == tok.decode(tok.encode(text)) == text


def test_import_export_import_is_bit_identical(imported, tmp_path, monkeypatch, capsys):
    _, _, run = imported
    assert cli(monkeypatch, capsys, "export-hf", str(run), str(tmp_path / "exp"))[0] == 0
    assert cli(monkeypatch, capsys, "import-hf", str(tmp_path / "exp"), str(tmp_path / "run2"))[0] == 0
    for name in ("model.safetensors", "tokenizer.json"):
        assert (run / name).read_bytes() == (tmp_path / "run2" / name).read_bytes(), name


def test_sinusoidal_and_biasless_runs_cannot_be_gpt2(isolated, small_corpus, monkeypatch, capsys):
    for flag, message in (("--pos-encoding=sinusoidal", "learned positions"), ("--no-bias", "biases")):
        name = flag.strip("-").split("=")[0]
        assert cli(monkeypatch, capsys, "train", str(small_corpus), *TINY_FLAGS, "--max-steps", "1", flag,
                   "--out", name)[0] == 0
        code, out, err = cli(monkeypatch, capsys, "export-hf", name, "exp-" + name)
        assert_clean_error(code, out, err, match=message)
        assert not (isolated / ("exp-" + name)).exists()


def test_export_onto_a_full_disk_is_a_clear_error_and_leaves_out_as_it_was(trained_run, monkeypatch, capsys):
    import errno

    from safetensors import SafetensorError

    from gptcli.store import weights

    (trained_run.parent / "exported").mkdir()
    (trained_run.parent / "exported" / "config.json").write_text('{"model_type": "gpt2"}')  # an HF folder
    (trained_run.parent / "exported" / "keep.txt").write_text("mine")

    def full(*args, **kwargs):  # what safetensors raises on a full disk
        raise SafetensorError(f"Error while serializing: I/O error: No space left on device (os error {errno.ENOSPC})")

    monkeypatch.setattr(weights, "save_file", full)
    code, out, err = cli(monkeypatch, capsys, "export-hf", str(trained_run), "exported", "--overwrite")
    assert_clean_error(code, out, err, expected_code=1, match="could not write exported: No space left on device")
    assert sorted(p.name for p in (trained_run.parent / "exported").iterdir()) == ["config.json", "keep.txt"]
    assert [p.name for p in trained_run.parent.iterdir() if p.name.startswith(".exported")] == []


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def _drop_tensor(folder, name):
    from safetensors.torch import load_file, save_file

    t = load_file(folder / "model.safetensors")
    del t[name]
    save_file(t, folder / "model.safetensors", metadata={"format": "pt"})


def _add_tensor(folder):
    from safetensors.torch import load_file, save_file

    t = load_file(folder / "model.safetensors")
    t["transformer.extra.weight"] = torch.zeros(3)
    save_file(t, folder / "model.safetensors", metadata={"format": "pt"})


def _pickle_only(folder):
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"not": "loaded"}))


BAD_IMPORT = [
    (lambda f: None, "missing", "no such folder"),
    (lambda f: (f / "config.json").unlink(), "hf", "no config.json"),
    (lambda f: _edit_config(f, model_type="llama"), "hf", "only gpt2"),
    (lambda f: _edit_config(f, activation_function="gelu"), "hf", "activation_function"),
    (lambda f: _edit_config(f, scale_attn_by_inverse_layer_idx=True), "hf", "scale_attn_by_inverse_layer_idx"),
    (lambda f: _edit_config(f, add_cross_attention=True), "hf", "add_cross_attention"),
    (lambda f: _edit_config(f, n_embd=96), "hf", "shape"),
    (lambda f: _drop_tensor(f, "transformer.h.0.mlp.c_fc.bias"), "hf", "missing h.0.mlp.c_fc.bias"),
    (_add_tensor, "hf", "unexpected extra.weight"),
    (_pickle_only, "hf", "never unpickles"),
    (lambda f: (f / "tokenizer.json").unlink(), "hf", "no tokenizer"),
]


@pytest.mark.parametrize("break_it, src, message", BAD_IMPORT, ids=[m for _, _, m in BAD_IMPORT])
def test_bad_import_leaves_out_untouched(tmp_path, shakespeare_text, monkeypatch, capsys, break_it, src, message):
    make_hf(tmp_path / "hf", shakespeare_text, **SHAPES["w48-h3-v301"])
    break_it(tmp_path / "hf")
    code, out, err = cli(monkeypatch, capsys, "import-hf", str(tmp_path / src), str(tmp_path / "out"))
    assert_clean_error(code, out, err, match=message)
    assert not (tmp_path / "out").exists()


def test_import_refuses_a_non_empty_out_without_overwrite(tmp_path, shakespeare_text, monkeypatch, capsys):
    make_hf(tmp_path / "hf", shakespeare_text, **SHAPES["w48-h3-v301"])
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    code, out, err = cli(monkeypatch, capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "out"))
    assert_clean_error(code, out, err, match="--overwrite")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"
    code, out, err = cli(monkeypatch, capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "out"), "--overwrite")
    assert_clean_error(code, out, err, match="refusing to --overwrite")  # not a run folder: never deleted
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"
    assert cli(monkeypatch, capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "run"))[0] == 0
    assert cli(monkeypatch, capsys, "import-hf", str(tmp_path / "hf"), str(tmp_path / "run"), "--overwrite")[0] == 0
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_fine_tune_an_imported_model(tmp_path, small_corpus, shakespeare_text, monkeypatch, capsys):
    make_hf(tmp_path / "hf", shakespeare_text, **SHAPES["w48-h3-v301"])
    assert cli(monkeypatch, capsys, "import-hf", str(tmp_path / "hf"), "imported")[0] == 0
    code, _, err = cli(monkeypatch, capsys, "train", str(small_corpus), "--init", "imported", "--max-steps", "3",
                       "--batch-size", "4", "--eval-iters", "2", "--out", "tuned")
    assert code == 0, err
    before, _, _ = load_run("imported")
    after, _, doc = load_run("tuned")
    assert doc["model"]["n_embd"] == 48 and not torch.equal(before.wte.weight, after.wte.weight)


def test_export_keeps_each_dropout():
    cfg = hf_config(ModelConfig(dropout=0.2, attn_dropout=0.0), eot_id=0)
    assert (cfg["resid_pdrop"], cfg["embd_pdrop"], cfg["attn_pdrop"]) == (0.2, 0.2, 0.0)
    assert hf_config(ModelConfig(dropout=0.1), eot_id=0)["attn_pdrop"] == 0.1
