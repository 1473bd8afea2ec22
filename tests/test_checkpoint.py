"""Run folders: bit-exact round trips, and clear errors for files that do not fit."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from gptcli.architectures import build
from gptcli.config import ModelConfig
from gptcli.errors import UsageError
from gptcli.store import checkpoint as ckpt
from gptcli.store.weights import read_tensors, save_weights


def _run(tmp_path, tok, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32), **kw})
    model = build(cfg)
    run = tmp_path / "run"
    run.mkdir()
    ckpt.write_tokenizer(run, tok)
    ckpt.write_config(run, cfg, tok, {"steps": 0})
    save_weights(run / ckpt.WEIGHTS, model)
    return run, model


@pytest.mark.parametrize("kw", [{}, {"pos_encoding": "sinusoidal"}, {"bias": False}, {"n_head": 4, "n_embd": 48},
                                {"arch": "lstm"}, {"arch": "gru"}])
def test_run_folder_round_trips_bit_for_bit(tmp_path, mixed_tokenizer, kw):
    """Every weight comes from the file: load_run builds the model without its random
    initialization, so a weight left unloaded would differ here."""
    run, model = _run(tmp_path, mixed_tokenizer, **kw)
    loaded, tok, doc = ckpt.load_run(run)
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    assert loaded.lm_head.weight is loaded.wte.weight
    assert tok.sha256 == mixed_tokenizer.sha256
    save_weights(tmp_path / "again.safetensors", loaded)
    assert (tmp_path / "again.safetensors").read_bytes() == (run / ckpt.WEIGHTS).read_bytes()


def test_tied_weights_are_stored_once(tmp_path, mixed_tokenizer):
    run, _ = _run(tmp_path, mixed_tokenizer)
    assert "lm_head.weight" not in read_tensors(run / ckpt.WEIGHTS)


def _trainer_state() -> dict:
    """A trainer state as the trainer saves it, for tests that need a valid resume/."""
    import dataclasses

    import numpy as np

    from gptcli.data import BatchSampler
    from gptcli.device import rng_state
    from gptcli.trainer import TrainState

    sampler = BatchSampler(np.zeros(100, dtype=np.uint16), 8, 2, seed=0)
    return {"trainer": dataclasses.asdict(TrainState()), "sampler": sampler.state_dict(), "rng": rng_state()}


def test_optimizer_state_round_trips(tmp_path, mixed_tokenizer):
    run, model = _run(tmp_path, mixed_tokenizer)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randint(0, 300, (2, 8)), torch.randint(0, 300, (2, 8)))[1].backward()
    opt.step()
    saved = _trainer_state()
    ckpt.save_resume(run, model, opt, saved)
    model2 = build(model.config)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    state = ckpt.load_resume(run, model2, opt2)
    assert state == json.loads(json.dumps(saved))
    for p, p2 in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, p2)
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[p][name], opt2.state[p2][name]), name


@pytest.mark.parametrize("value, error", [("a lot", "trainer.regularization must be"), (0.5, None),
                                          (None, None), ("absent", None)])
def test_every_trainer_state_field_is_type_checked_on_load(tmp_path, mixed_tokenizer, value, error):
    """The schema is TrainState's own fields: `regularization` (the field the
    hand-written schema had missed) is checked, and may be absent in older runs."""
    run, model = _run(tmp_path, mixed_tokenizer)
    saved = _trainer_state()
    if value == "absent":
        del saved["trainer"]["regularization"]
    else:
        saved["trainer"]["regularization"] = value
    ckpt.save_resume(run, model, torch.optim.AdamW(model.parameters()), saved)
    if error:
        with pytest.raises(UsageError, match=error):
            ckpt.read_trainer_state(run)
    else:
        assert ckpt.read_trainer_state(run)["trainer"] == saved["trainer"]


def test_config_disagreeing_with_weights_is_named(tmp_path, mixed_tokenizer):
    run, _ = _run(tmp_path, mixed_tokenizer)
    doc = json.loads((run / "config.json").read_text())
    doc["model"]["n_embd"] = 64
    (run / "config.json").write_text(json.dumps(doc))
    with pytest.raises(UsageError, match="does not match config.json"):
        ckpt.load_run(run)


def test_non_finite_weights_are_reported(tmp_path, mixed_tokenizer):
    run, model = _run(tmp_path, mixed_tokenizer)
    with torch.no_grad():
        model.h[1].mlp.c_fc.weight[3, 5] = float("nan")
    save_weights(run / ckpt.WEIGHTS, model)
    with pytest.raises(UsageError, match="h.1.mlp.c_fc.weight holds NaN"):
        ckpt.load_run(run)


def test_truncated_weights_are_reported(tmp_path, mixed_tokenizer):
    run, _ = _run(tmp_path, mixed_tokenizer)
    data = (run / ckpt.WEIGHTS).read_bytes()
    (run / ckpt.WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(UsageError, match="not a valid safetensors"):
        ckpt.load_run(run)


def test_pickle_under_a_safetensors_name_is_never_loaded(tmp_path, mixed_tokenizer):
    run, _ = _run(tmp_path, mixed_tokenizer)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (run / ckpt.WEIGHTS).write_bytes(pickle.dumps(Evil(), protocol=4))
    with pytest.raises(UsageError, match="pickle"):
        ckpt.load_run(run)
    assert not marker.exists()


def test_tokenizer_from_another_run_is_rejected(tmp_path, mixed_tokenizer):
    from gptcli.tokenizer import BPETokenizer

    run, _ = _run(tmp_path, mixed_tokenizer)
    BPETokenizer.train(["other text entirely " * 20], mixed_tokenizer.vocab_size).save(run)
    with pytest.raises(UsageError, match="tokenizer"):
        ckpt.load_run(run)


@pytest.mark.parametrize("setup, message", [
    (lambda run: (run / "config.json").unlink(), "not a gptcli run folder"),
    (lambda run: (run / "config.json").write_text("{oops"), "not valid JSON"),
    (lambda run: (run / ckpt.WEIGHTS).unlink(), "missing model.safetensors"),
    (lambda run: (run / "tokenizer.json").unlink(), "no tokenizer"),
])
def test_broken_run_folders_get_specific_errors(tmp_path, mixed_tokenizer, setup, message):
    run, _ = _run(tmp_path, mixed_tokenizer)
    setup(run)
    with pytest.raises(UsageError, match=message):
        ckpt.load_run(run)


def test_a_missing_folder_is_not_a_run(tmp_path):
    with pytest.raises(UsageError, match="no such run folder"):
        ckpt.load_run(tmp_path / "nowhere")


def test_planted_pickles_are_never_executed_anywhere_a_file_is_read(tmp_path, mixed_tokenizer, monkeypatch, capsys):
    """A pickle that would create a marker file, planted in every file gptcli reads."""
    from helpers import cli

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Evil(), protocol=4)
    run, model = _run(tmp_path, mixed_tokenizer)
    opt = torch.optim.AdamW(model.parameters())
    ckpt.save_resume(run, model, opt, {"trainer": {}, "sampler": {}})
    for name in ("model.safetensors", "resume/model.safetensors", "resume/optimizer.safetensors",
                 "tokenizer.json", "config.json", "resume/trainer_state.json"):
        victim = tmp_path / f"victim-{name.replace('/', '-')}"
        import shutil

        shutil.copytree(run, victim)
        (victim / name).write_bytes(payload)
        for args in (["info", str(victim)], ["generate", "-c", str(victim), "-p", "x", "-n", "2"],
                     ["eval", str(victim / "tokenizer.json"), "-c", str(victim)],
                     ["train", "--resume", str(victim)], ["export-hf", str(victim), str(tmp_path / "exp")]):
            code, _, err = cli(monkeypatch, capsys, *args)
            assert "Traceback" not in err
            assert not marker.exists(), (name, args)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text('{"model_type": "gpt2"}')
    mixed_tokenizer.save(hf)
    (hf / "pytorch_model.bin").write_bytes(payload)
    code, _, err = cli(monkeypatch, capsys, "import-hf", str(hf), str(tmp_path / "imp"))
    assert code == 2 and "never unpickles" in err and not marker.exists()


@pytest.mark.parametrize("member", [".lock", "resume", "metrics.jsonl"])
def test_a_run_folder_is_never_written_through_a_symbolic_link(trained_run, monkeypatch, capsys, member):
    """A .lock, resume/ or metrics.jsonl that links out of the run folder: --resume is
    refused in one line, and what the link names is untouched."""
    import shutil

    from helpers import assert_clean_error, cli

    outside = trained_run.parent / f"outside-{member.strip('.')}"
    target = trained_run / member
    if target.is_dir():
        shutil.copytree(target, outside)
        shutil.rmtree(target)
    else:
        outside.write_text("precious\n") if not target.exists() else shutil.copyfile(target, outside)
        target.unlink(missing_ok=True)
    target.symlink_to(outside)
    before = {p: p.read_bytes() for p in ([outside] if outside.is_file() else sorted(outside.rglob("*")))}
    code, out, err = cli(monkeypatch, capsys, "train", "--resume", str(trained_run), "--max-steps", "25")
    assert_clean_error(code, out, err, match="is a symbolic link: gptcli writes no run folder through a link")
    assert {p: p.read_bytes() for p in before} == before and target.is_symlink()


def test_a_run_folder_whose_name_is_not_utf8_loads_saves_and_resumes(trained_run, monkeypatch, capsys):
    """The OS allows any bytes but / in a name; safetensors takes only UTF-8 names. Such
    a run is read, written and resumed (not blamed as an invalid safetensors file), and
    --json and messages show the odd byte as \\xff."""
    import json
    import os
    import shutil

    from helpers import cli

    odd = trained_run.parent / os.fsdecode(b"run\xff")
    shutil.copytree(trained_run, odd)
    code, out, err = cli(monkeypatch, capsys, "generate", "-c", str(odd), "-p", "hi", "-n", "3", "--greedy")
    assert code == 0, err
    code, out, err = cli(monkeypatch, capsys, "train", "--resume", str(odd), "--max-steps", "22", "--json")
    assert code == 0, err
    assert json.loads(out)["run"].endswith("run\\xff") and "run\\xff" in err
    ckpt.load_run(odd)
    assert (odd / "resume" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
