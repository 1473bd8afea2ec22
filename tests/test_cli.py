"""The CLI as users meet it: through Typer's runner, in-process with gptcli's own error
handling, and as a real subprocess (exit codes, signals, what goes to stdout)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from gptcli.cli.app import app
from gptcli.commands.train_plan import settings_for

from helpers import TINY_FLAGS, assert_clean_error, cli, hold_lock, run_gptcli

# -- happy paths -------------------------------------------------------------------


def test_train_through_typer_runner_makes_a_complete_run_folder(small_corpus):
    result = CliRunner().invoke(app, ["train", str(small_corpus), *TINY_FLAGS, "--max-steps", "6",
                                      "--eval-interval", "3", "--out", "run", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["stop_reason"] == "max_steps" and summary["steps"] == 6
    run = small_corpus.parent / "run"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "metrics.jsonl",
                 "resume/model.safetensors", "resume/optimizer.safetensors", "resume/trainer_state.json"):
        assert (run / name).is_file(), name
    assert (small_corpus.parent / "tokenizer" / "tokenizer.json").is_file()  # trained into the workspace
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6] and all(r["val_bpb"] > 0 for r in evals)
    assert "tokenizer: none found, training" in result.stderr


def test_second_run_reuses_tokenizer_and_token_cache(monkeypatch, capsys, small_corpus):
    args = ["train", str(small_corpus), *TINY_FLAGS[:-2], "--max-steps", "2"]
    code, _, err = cli(monkeypatch, capsys, *args, "--vocab-size", "300", "--out", "a")
    assert code == 0 and "training a 300-token" in err and "tokenized in" in err
    code, _, err = cli(monkeypatch, capsys, *args, "--out", "b")  # no --vocab-size: reuse
    assert code == 0 and "reusing tokenizer" in err and "(cached)" in err


def test_info_reports_config_and_summary(monkeypatch, capsys, small_corpus):
    cli(monkeypatch, capsys, "train", str(small_corpus), *TINY_FLAGS, "--max-steps", "2", "--out", "run")
    code, out, _ = cli(monkeypatch, capsys, "info", "run", "--json")
    d = json.loads(out)
    assert code == 0 and d["model"]["n_embd"] == 32 and d["training"]["steps"] == 2 and d["resumable"]
    assert d["params"] > 0
    code, out, _ = cli(monkeypatch, capsys, "info", "run")
    assert code == 0 and "parameters" in out and "2 steps" in out
    assert ("recipe       muon, lr 0.004, weight decay 0.5, cosine schedule, batch 4, dropout and weight decay "
            "beyond 4 passes") in out  # the tiny preset's
    assert "dropout 0.2 (attention 0.0)" in out


@pytest.mark.parametrize("preset, given, expected", [
    # a new GPT: Muon, with the settings measured with it
    ("tiny", {}, ("muon", 4e-3, 0.5, 0.2, 0.0, 4.0)),
    ("tiny", {"optimizer": "muon", "lr": 1e-3, "dropout": 0.0}, ("muon", 1e-3, 0.5, 0.0, 0.0, 4.0)),  # flags win
    ("tiny", {"regularize_beyond": 0.0}, ("muon", 4e-3, 0.5, 0.2, 0.0, 0.0)),
    # --optimizer adamw: the tiny recipe before Muon (2026-11-22), exactly
    ("tiny", {"optimizer": "adamw"}, ("adamw", 2e-3, 0.1, 0.0, 0.0, 0.0)),
    ("tiny", {"arch": "lstm"}, ("adamw", 2e-3, 0.1, 0.0, 0.0, 0.0)),  # the recurrent nets keep AdamW
    ("tiny", {"arch": "gru", "optimizer": "muon"}, ("muon", 4e-3, 0.5, 0.2, 0.2, 4.0)),  # no attention: unset
    ("small", {}, ("adamw", 1e-3, 0.1, 0.1, 0.1, 0.0)),  # no Muon settings: AdamW
    ("small", {"optimizer": "muon"}, ("muon", 1e-3, 0.1, 0.1, 0.1, 0.0)),
])
def test_which_recipe_a_preset_gives(preset, given, expected):
    model, train = settings_for(preset, given)
    assert (train.optimizer, train.lr, train.weight_decay, model.dropout, model.attention_dropout,
            train.regularize_beyond) == expected


def test_fine_tuning_keeps_adamw():
    model, train = settings_for("tiny", {}, from_scratch=False)
    assert (train.optimizer, train.lr, model.dropout) == ("adamw", 2e-3, 0.0)


def test_muon_and_wsd_through_the_cli_and_the_optimizer_is_fixed_on_resume(monkeypatch, capsys, small_corpus):
    code, _, err = cli(monkeypatch, capsys, "train", str(small_corpus), *TINY_FLAGS, "--max-steps", "3",
                       "--optimizer", "muon", "--lr", "4e-3", "--schedule", "wsd", "--out", "run")
    assert code == 0, err
    code, out, _ = cli(monkeypatch, capsys, "info", "run")
    assert "recipe       muon, lr 0.004, weight decay 0.5, wsd schedule, batch 4, dropout and weight" in out
    assert cli(monkeypatch, capsys, "train", "--resume", "run", "--max-steps", "5")[0] == 0
    code, out, err = cli(monkeypatch, capsys, "train", "--resume", "run", "--max-steps", "6", "--optimizer", "adamw")
    assert_clean_error(code, out, err, match="--optimizer cannot change when resuming")


def test_stdin_corpus_and_sinusoidal_positions(monkeypatch, capsys, shakespeare_text):
    code, out, err = cli(monkeypatch, capsys, "train", "-", *TINY_FLAGS, "--max-steps", "2", "--out", "run",
                         "--pos-encoding", "sinusoidal", stdin=shakespeare_text[:20000].encode())
    assert code == 0, err
    assert out == ""  # stdout carries only the product; training has none without --json
    doc = json.loads(open("run/config.json").read())
    assert doc["model"]["pos_encoding"] == "sinusoidal" and doc["training"]["corpus"] == ["<stdin>"]


def test_tokenizer_commands_form_a_pipeline(monkeypatch, capsys, small_corpus):
    code, _, _ = cli(monkeypatch, capsys, "tokenizer", "train", str(small_corpus), "--vocab-size", "400",
                     "--out", "tok")
    assert code == 0 and json.loads(open("tok/tokenizer.json").read())["model"]["type"] == "BPE"
    text = "To be, or not to be 🙂 世界\r\n"
    code, ids, _ = cli(monkeypatch, capsys, "tokenizer", "encode", "--tokenizer", "tok", stdin=text.encode())
    assert code == 0 and all(t.isdigit() for t in ids.split())
    code, back, _ = cli(monkeypatch, capsys, "tokenizer", "decode", "--tokenizer", "tok", stdin=ids.encode())
    assert code == 0 and back == text
    code, _, err = cli(monkeypatch, capsys, "tokenizer", "train", str(small_corpus), "--out", "tok")
    assert_clean_error(code, "", err, match="exists")


def test_overwrite_replaces_a_run_and_resume_continues_it(monkeypatch, capsys, small_corpus):
    args = ["train", str(small_corpus), *TINY_FLAGS, "--max-steps", "3", "--out", "run"]
    assert cli(monkeypatch, capsys, *args)[0] == 0
    assert cli(monkeypatch, capsys, *args, "--overwrite")[0] == 0
    code, _, err = cli(monkeypatch, capsys, "train", "--resume", "run", "--max-steps", "5")
    assert code == 0, err
    assert json.loads(open("run/config.json").read())["training"]["steps"] == 5


# -- bad input: one line on stderr, exit 2, nothing written ------------------------------


BAD_TRAIN = [
    (["missing.txt"], "no such file"),
    (["emptydir"], "no UTF-8 text, JSON lines or Parquet files"),
    (["empty.txt"], "empty"),
    (["binary.bin"], "binary"),
    (["latin1.txt"], "not UTF-8"),
    (["tiny.txt"], "fewer than one block"),
    (["corpus.txt", "--n-embd", "30", "--n-head", "4"], "not divisible"),
    (["corpus.txt", "--lr", "0"], "--lr"),
    (["corpus.txt", "--lr", "-1e-3"], "--lr"),
    (["corpus.txt", "--max-steps", "0"], "--max-steps"),
    (["corpus.txt", "--batch-size", "0"], "--batch-size"),
    (["corpus.txt", "--vocab-size", "100"], "at least 257"),
    (["corpus.txt", "--max-time", "soon"], "duration"),
    (["corpus.txt", "--max-time", "1h1h"], "cannot read duration '1h1h'"),  # a typo, not two hours
    (["corpus.txt", "--max-time", "30m1h"], "cannot read duration"),
    (["corpus.txt", "--max-time", "\u0663s"], "cannot read duration"),  # an Arabic-Indic 3, which float() reads
    (["corpus.txt", "--max-time", " 5s"], "cannot read duration"),
    (["corpus.txt", "--max-time", "1H"], "cannot read duration"),
    (["corpus.txt", "--val", "corpus.txt", "--val-fraction", "0.3"], "--val-fraction splits the corpus"),
    (["-", "-"], "- (stdin) is given twice"),
    (["run"], "is a run or model folder (gptcli's output), not text"),
    (["corpus.txt", "--preset", "huge"], "unknown preset"),
    (["corpus.txt", "--dropout", "1.5"], "--dropout"),
    (["corpus.txt", "--val-fraction", "1"], "--val-fraction"),
    (["corpus.txt", "--pos-encoding", "rotary"], "--pos-encoding"),
    (["corpus.txt", "--dtype", "float16", "--device", "cpu"], "float16"),
    (["corpus.txt", "--lr", "abc"], "--lr"),
    (["corpus.txt", "--optimizer", "sgd"], "--optimizer"),
    (["corpus.txt", "--schedule", "linear"], "--schedule"),
    (["--resume", "notarun"], "no such run folder"),
    (["--resume", "emptydir"], "not a gptcli run folder"),
    (["corpus.txt", "--out", "/dev/null/run"], "cannot create --out"),
    (["corpus.txt", "--out", "full"], "not empty"),
    (["corpus.txt", "--out", "full", "--overwrite"], "not a gptcli run folder"),
    ([], "no corpus given"),
]


@pytest.mark.parametrize("args, message", BAD_TRAIN, ids=[" ".join(a) or "no-args" for a, _ in BAD_TRAIN])
def test_bad_train_input_is_one_clear_line(monkeypatch, capsys, small_corpus, args, message):
    ws = small_corpus.parent
    (ws / "emptydir").mkdir()
    (ws / "empty.txt").write_text("")
    (ws / "binary.bin").write_bytes(b"\x00\xff" * 50)
    (ws / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 20)
    (ws / "tiny.txt").write_text("just a few words")
    (ws / "full").mkdir()
    (ws / "full" / "keep.txt").write_text("precious")
    (ws / "run").mkdir()
    (ws / "run" / "model.safetensors").write_bytes(b"")
    before = sorted(p.name for p in ws.iterdir())
    code, out, err = cli(monkeypatch, capsys, "train", *TINY_FLAGS[:-2], *args)
    assert_clean_error(code, out, err, match=message)
    after = sorted(p.name for p in ws.iterdir() if p.name != "tokenizer")
    assert after == before  # no run folder, nothing half-written
    assert (ws / "full" / "keep.txt").read_text() == "precious"


def test_overwrite_refuses_a_run_that_holds_the_corpus(trained_run, monkeypatch, capsys, small_corpus):
    inside = trained_run / "my_corpus.txt"
    inside.write_text(small_corpus.read_text())
    before = {p.name: p.read_bytes() for p in trained_run.iterdir() if p.is_file()}
    code, out, err = cli(monkeypatch, capsys, "train", str(inside), *TINY_FLAGS, "--out", str(trained_run),
                         "--overwrite")
    assert_clean_error(code, out, err, match=f"is inside {trained_run}, which --overwrite would replace")
    assert {p.name: p.read_bytes() for p in trained_run.iterdir() if p.is_file()} == before


BAD_TOKENIZER = [
    (["tokenizer", "encode", "--tokenizer", "nowhere"], None, "no tokenizer"),
    (["tokenizer", "decode"], b"1 2 x", "integer token ids"),
    (["tokenizer", "decode"], b"999999", "outside the vocabulary"),
    (["tokenizer", "decode"], b"[" * 100000, "integer token ids"),  # nested without end: no RecursionError
    (["tokenizer", "encode"], b"\xff\xfe bad", "not UTF-8"),
    (["tokenizer", "train", "missing.txt", "--out", "t2"], None, "no such file"),
    (["tokenizer", "train", "corpus.txt", "--vocab-size", "10", "--out", "t2"], None, "at least 257"),
    (["info", "nowhere"], None, "no such run folder"),
]


@pytest.mark.parametrize("args, stdin, message", BAD_TOKENIZER, ids=[" ".join(a) for a, _, _ in BAD_TOKENIZER])
def test_bad_tokenizer_and_info_input(monkeypatch, capsys, small_corpus, args, stdin, message):
    cli(monkeypatch, capsys, "tokenizer", "train", str(small_corpus), "--vocab-size", "300")
    code, out, err = cli(monkeypatch, capsys, *args, stdin=stdin)
    assert_clean_error(code, out, err, match=message)


# -- the real command --------------------------------------------------------------


@pytest.mark.slow
def test_help_is_fast_and_does_not_import_torch(tmp_path):
    probe = ("import sys, time; t = time.perf_counter(); sys.argv = ['gptcli', 'train', '--help']\n"
             "from gptcli.cli.app import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "heavy = [m for m in ('torch', 'tokenizers', 'safetensors', 'numpy') if m in sys.modules]\n"
             "print('HEAVY', heavy, time.perf_counter() - t, file=sys.stderr)")
    import subprocess

    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("HEAVY")][0]
    assert "HEAVY []" in line, line
    assert "--max-time" in proc.stdout


@pytest.mark.slow
def test_subprocess_train_then_bad_input(small_corpus):
    proc = run_gptcli("train", str(small_corpus), *TINY_FLAGS, "--max-steps", "2", "--out", "run", "--json",
                      cwd=small_corpus.parent)
    assert proc.returncode == 0, proc.stderr.decode()
    assert json.loads(proc.stdout)["steps"] == 2
    bad = run_gptcli("train", "nope.txt", cwd=small_corpus.parent)
    assert bad.returncode == 2 and bad.stdout == b""
    assert bad.stderr.decode().strip() == "error: nope.txt: no such file or folder"


def _wait_for_step(metrics, step, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists():
            steps = [json.loads(ln)["step"] for ln in metrics.read_text().splitlines() if ln.endswith("}")]
            if steps and max(steps) >= step:
                return
        time.sleep(0.02)
    raise AssertionError("training did not reach the step in time")


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_and_resume_equals_an_uninterrupted_run(small_corpus, sig, code):
    import os
    import subprocess

    ws = small_corpus.parent
    args = ["train", str(small_corpus), *TINY_FLAGS, "--max-steps", "400", "--eval-interval", "50"]
    straight = run_gptcli(*args, "--out", "straight", cwd=ws)
    assert straight.returncode == 0, straight.stderr.decode()

    proc = subprocess.Popen([sys.executable, "-m", "gptcli", *args, "--out", "cut"], cwd=ws,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ)
    _wait_for_step(ws / "cut" / "metrics.jsonl", 20, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err.decode()
    assert b"--resume" in err and b"Traceback" not in err
    stopped = json.loads((ws / "cut" / "config.json").read_text())["training"]["steps"]
    assert 20 <= stopped < 400

    resumed = run_gptcli("train", "--resume", "cut", cwd=ws)
    assert resumed.returncode == 0, resumed.stderr.decode()

    def losses(run):
        return {r["step"]: r["loss"] for r in map(json.loads, (ws / run / "metrics.jsonl").read_text().splitlines())
                if r["type"] == "train"}

    a, b = losses("straight"), losses("cut")
    assert sorted(a) == sorted(b) == list(range(1, 401))
    assert all(abs(a[s] - b[s]) <= 1e-6 for s in a)


def test_val_file_and_fine_tuning_with_init(monkeypatch, capsys, small_corpus, shakespeare_text):
    val = small_corpus.parent / "val.txt"
    val.write_text(shakespeare_text[-5000:])
    base = ["train", str(small_corpus), *TINY_FLAGS, "--max-steps", "3"]
    code, _, err = cli(monkeypatch, capsys, *base, "--val", str(val), "--out", "base")
    assert code == 0, err
    doc = json.loads(open("base/config.json").read())
    assert doc["training"]["val_paths"] == [str(val)] and doc["training"]["val_fraction"] is None
    from gptcli.store.checkpoint import load_run

    code, _, err = cli(monkeypatch, capsys, "train", str(small_corpus), "--init", "base", "--max-steps", "2",
                       "--batch-size", "4", "--eval-iters", "2", "--out", "tuned")
    assert code == 0, err
    assert "init: starting from the weights of base" in err
    tuned, _, doc = load_run("tuned")
    assert doc["model"]["n_embd"] == 32 and doc["training"]["init"] == "base"
    assert doc["tokenizer"]["sha256"] == json.loads(open("base/config.json").read())["tokenizer"]["sha256"]


def test_resume_refuses_changes_that_would_break_it(monkeypatch, capsys, small_corpus, shakespeare_text):
    assert cli(monkeypatch, capsys, "train", str(small_corpus), *TINY_FLAGS, "--max-steps", "2", "--out", "run")[0] == 0
    code, out, err = cli(monkeypatch, capsys, "train", "--resume", "run", "--lr", "0.1")
    assert_clean_error(code, out, err, match="--lr cannot change when resuming")
    code, out, err = cli(monkeypatch, capsys, "train", "--resume", "run", "--out", "x")
    assert_clean_error(code, out, err, match="--resume continues a run in place")
    assert cli(monkeypatch, capsys, "train", "-", *TINY_FLAGS, "--max-steps", "2", "--out", "piped",
               stdin=shakespeare_text[:20000].encode())[0] == 0
    code, out, err = cli(monkeypatch, capsys, "train", "--resume", "piped")
    assert_clean_error(code, out, err, match="trained on stdin")


def test_a_run_folder_has_one_writer_and_a_killed_writers_lock_is_recovered(monkeypatch, capsys, small_corpus):
    args = ["train", str(small_corpus), *TINY_FLAGS, "--max-steps", "2", "--out", "run"]
    assert cli(monkeypatch, capsys, *args)[0] == 0
    lock = small_corpus.parent / "run" / ".lock"
    assert not lock.exists()  # released on exit
    writer = hold_lock(lock)
    try:
        code, out, err = cli(monkeypatch, capsys, "train", "--resume", "run", "--max-steps", "3")
        assert_clean_error(code, out, err, match=f"another gptcli process (pid {writer.pid})")
        code, out, err = cli(monkeypatch, capsys, *args, "--overwrite")
        assert_clean_error(code, out, err, match="is writing to it")
    finally:
        writer.kill()
        writer.wait()
    assert lock.read_text() == str(writer.pid)  # a killed writer leaves its lock file behind
    code, _, err = cli(monkeypatch, capsys, "train", "--resume", "run", "--max-steps", "3")  # the writer is gone
    assert code == 0 and "taking over the lock" in err
    assert not lock.exists()


def test_a_lock_file_whose_pid_is_alive_but_unlocked_is_stale(monkeypatch, capsys, small_corpus):
    """A pid in a lock file proves nothing (pids are reused): only a held lock refuses."""
    args = ["train", str(small_corpus), *TINY_FLAGS, "--max-steps", "2", "--out", "run"]
    assert cli(monkeypatch, capsys, *args)[0] == 0
    (small_corpus.parent / "run" / ".lock").write_text(str(os.getpid()))  # alive, and not locking
    code, _, err = cli(monkeypatch, capsys, "train", "--resume", "run", "--max-steps", "3")
    assert code == 0 and "taking over the lock" in err


def test_a_full_disk_fails_cleanly_and_keeps_the_last_checkpoint(monkeypatch, capsys, small_corpus):
    import errno

    from gptcli.store import checkpoint as ckpt
    from gptcli.store import weights

    run = small_corpus.parent / "run"
    assert cli(monkeypatch, capsys, "train", str(small_corpus), *TINY_FLAGS, "--max-steps", "4",
               "--eval-interval", "2", "--out", "run")[0] == 0
    before = (run / "resume" / "trainer_state.json").read_bytes()

    from safetensors import SafetensorError

    def full(*args, **kwargs):  # what safetensors raises on a full disk (its own error, not OSError)
        raise SafetensorError(f"Error while serializing: I/O error: No space left on device (os error {errno.ENOSPC})")

    monkeypatch.setattr(weights, "save_file", full)
    code, out, err = cli(monkeypatch, capsys, "train", "--resume", "run", "--max-steps", "8")
    assert_clean_error(code, out, err, expected_code=1, match="No space left on device")
    assert "error: could not write" in err and "SafetensorError" not in err  # named as the write failure it is
    assert (run / "resume" / "trainer_state.json").read_bytes() == before  # the last good step is intact
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".resume.")]
    assert not (run / ".lock").exists()
    monkeypatch.undo()
    ckpt.load_run(run)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs a POSIX file-size limit")
def test_a_real_write_failure_in_safetensors_is_a_clear_error(trained_run):
    """No mock: the real library writing under a file-size limit smaller than the weights."""
    import resource

    before = (trained_run / "resume" / "trainer_state.json").read_bytes()
    limit = (trained_run / "model.safetensors").stat().st_size // 2

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "gptcli", "train", "--resume", "run", "--max-steps", "24"],
                          capture_output=True, text=True, timeout=120, preexec_fn=small_files)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "SafetensorError" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "error: could not write run/resume/model.safetensors: File too large", last
    assert (trained_run / "resume" / "trainer_state.json").read_bytes() == before
    assert not [p for p in trained_run.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".resume.")]
    from gptcli.store import checkpoint as ckpt

    ckpt.load_run(trained_run)


def test_an_unwritable_out_folder_is_refused_before_any_work(monkeypatch, capsys, small_corpus):
    import os

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("locked") else real_access(p, mode))
    (small_corpus.parent / "locked").mkdir()
    code, out, err = cli(monkeypatch, capsys, "train", str(small_corpus), *TINY_FLAGS, "--out", "locked/run")
    assert_clean_error(code, out, err, match="permission denied")
    assert not (small_corpus.parent / "tokenizer").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_a_missing_gpu_is_a_clear_error(monkeypatch, capsys, small_corpus):
    code, out, err = cli(monkeypatch, capsys, "train", str(small_corpus), *TINY_FLAGS, "--device", "cuda")
    assert_clean_error(code, out, err, match="no CUDA GPU is available")


@pytest.mark.slow
def test_closed_stdin_is_a_clear_error(small_corpus):
    import subprocess

    from gptcli.tokenizer import BPETokenizer

    BPETokenizer.train([small_corpus.read_text()], 300).save(small_corpus.parent / "tok")
    cmd = f"{sys.executable} -m gptcli tokenizer encode --tokenizer {small_corpus.parent / 'tok'} <&-"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == "error: stdin is closed: pipe text in", proc.stderr


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(monkeypatch, capsys, small_corpus):
    """No run folder, no ./tokenizer/ it trained, no lock: nothing a later command could
    mistake for a run (a folder of random weights used to look like 'the newest run')."""
    from gptcli.errors import RunError
    from gptcli.trainer import Trainer

    def diverge(self):
        raise RunError("loss became nan at step 1; stopping: no checkpoint was written. Try a lower --lr")

    monkeypatch.setattr(Trainer, "run", diverge)
    code, out, err = cli(monkeypatch, capsys, "train", str(small_corpus), *TINY_FLAGS, "--out", "run")
    assert_clean_error(code, out, err, expected_code=1, match="loss became nan")
    assert sorted(p.name for p in small_corpus.parent.iterdir()) == ["corpus.txt"]


def test_an_error_naming_a_path_with_a_newline_stays_one_line(isolated, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "generate", "-c", "bad\nname", "-p", "x")
    assert_clean_error(code, out, err, match=r"bad\nname: no such run folder")  # the newline, escaped
    assert err.count("\n") == 1


def test_init_refuses_every_shape_flag_it_would_drop_and_warns_about_a_presets(monkeypatch, capsys, small_corpus):
    """--init takes the shape of the run it starts from: shape flags that disagree are
    refused in one line naming all of them, a --preset's shape is named in one warning,
    and --resume names every flag it cannot change."""
    code, _, err = cli(monkeypatch, capsys, "train", str(small_corpus), *TINY_FLAGS, "--max-steps", "2",
                       "--out", "base")
    assert code == 0, err
    tune = ["train", str(small_corpus), "--init", "base", "--max-steps", "1", "--batch-size", "4", "--eval-iters", "1"]
    code, out, err = cli(monkeypatch, capsys, *tune, "--arch", "lstm", "--n-layer", "3", "--n-embd", "32",
                         "--out", "t1")
    assert_clean_error(code, out, err, match="--arch lstm, --n-layer 3 disagree with the model --init base starts "
                                             "from (arch gpt, n_layer 1)")
    code, out, err = cli(monkeypatch, capsys, *tune, "--vocab-size", "500", "--out", "t1")
    assert_clean_error(code, out, err, match="--vocab-size 500 disagrees")
    code, out, err = cli(monkeypatch, capsys, *tune, "--preset", "small", "--block-size", "32", "--out", "t2")
    assert code == 0, err
    assert err.count("warning: --init base fixes the model shape, so --preset small's n_layer 6, n_head 6, "
                     "n_embd 384 is not used") == 1
    code, out, err = cli(monkeypatch, capsys, "train", "--resume", "base", "--lr", "0.1", "--n-layer", "3")
    assert_clean_error(code, out, err, match="--lr, --n-layer cannot change when resuming")
