"""`gptcli generate` as users run it: prompts from flags, stdin and files, streaming that
never splits a character, stop strings, JSON records, pipelines and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from gptcli.generation import engine
from gptcli.generation.kernels import has_fp16_kernel

from helpers import TINY_FLAGS, assert_clean_error, cli, copy_trained, run_gptcli, train_once

CJK = ("春眠不觉晓，处处闻啼鸟。夜来风雨声，花落知多少。🌸🌧️🐦 "
       "床前明月光，疑是地上霜。举头望明月，低头思故乡。🌙✨ ")


@pytest.fixture(scope="module")
def cjk_template(tmp_path_factory):
    return train_once(tmp_path_factory.mktemp("cjk"), "poems.txt", CJK * 300, *TINY_FLAGS[:-2], "--vocab-size",
                      "300", "--max-steps", "200", "--optimizer", "adamw", "--lr", "3e-3", "--out", "run")


@pytest.fixture
def cjk_run(isolated, cjk_template):
    """A tiny model trained briefly on CJK and emoji text (so it emits multi-byte characters):
    trained once for this module, copied into each test's workspace."""
    copy_trained(cjk_template, isolated)
    return isolated / "run"


@pytest.mark.slow
def test_streamed_text_equals_final_text_for_cjk_and_emoji(cjk_run):
    args = ["generate", "-c", str(cjk_run), "-p", "春眠", "-n", "120", "--seed", "5", "--top-k", "3"]
    streamed = run_gptcli(*args, cwd=cjk_run.parent)
    final = run_gptcli(*args, "--json", cwd=cjk_run.parent)
    assert streamed.returncode == 0 and final.returncode == 0, streamed.stderr.decode()
    record = json.loads(final.stdout)
    text = streamed.stdout.decode("utf-8")  # strict: a split character would fail here
    assert text == record["text"]
    assert sum(ord(c) > 0x3000 for c in text) > 20  # real CJK came through whole


def test_stream_pieces_are_whole_characters(cjk_run):
    from gptcli.commands.generate import GenerateRequest, run
    from gptcli.config import SampleConfig
    from gptcli.console import Console
    from gptcli.store.checkpoint import load_run

    class Recorder:
        def __init__(self):
            self.pieces = []

        def write(self, s):
            self.pieces.append(s)

        def flush(self):
            pass

        def isatty(self):
            return False

    sink = Recorder()
    cfg = SampleConfig(strategy="sample", max_new_tokens=100, temperature=1.0, top_k=3, top_p=None, seed=3)
    result = run(GenerateRequest(cjk_run, ["春眠"], cfg, keep=True), sink, Console(quiet=True))
    [out] = result.outputs
    assert result.count == 1 and result.to_json()[0]["text"] == out.text
    _, tok, _ = load_run(cjk_run)
    assert len(sink.pieces) > 10
    assert "".join(sink.pieces) == out.text
    # the same as decoding all the bytes at once (an undertrained model may emit invalid
    # byte sequences: both sides replace them the same way)
    assert out.text == b"".join(tok.token_bytes[i] for i in out.token_ids).decode("utf-8", errors="replace")
    for piece in sink.pieces:
        piece.encode("utf-8")  # a lone surrogate or partial character cannot encode


def test_prompts_file_batches_in_input_order(cjk_run, monkeypatch, capsys):
    prompts = ["春眠", "", "床前明月光", "夜来"]
    path = cjk_run.parent / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts), encoding="utf-8")
    code, out, err = cli(monkeypatch, capsys, "generate", "-c", str(cjk_run), "--prompts", str(path), "-n", "12",
                         "--greedy", "--json", "--batch-size", "3")
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["prompt"] for r in records] == prompts
    for r in records:  # each equals the same prompt generated alone
        code, alone, _ = cli(monkeypatch, capsys, "generate", "-c", str(cjk_run), "-p", r["prompt"], "-n", "12",
                             "--greedy", "--json")
        assert json.loads(alone)["token_ids"] == r["token_ids"]
        assert set(r) >= {"prompt", "text", "token_ids", "finish_reason", "logprob", "strategy", "seed",
                          "tokens_per_second"}


def test_plain_lines_and_stdin_prompts(cjk_run, monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "generate", "-c", str(cjk_run), "--prompts", "-", "-n", "8", "--greedy",
                       stdin="春眠\n床前\n".encode())
    assert code == 0 and len(out.splitlines()) == 2
    code, piped, _ = cli(monkeypatch, capsys, "generate", "-c", str(cjk_run), "-n", "8", "--greedy",
                         stdin="春眠".encode())
    code, flag, _ = cli(monkeypatch, capsys, "generate", "-c", str(cjk_run), "-p", "春眠", "-n", "8", "--greedy")
    assert piped == flag and piped == out.splitlines()[0]


def test_stop_strings_cut_the_output(cjk_run, monkeypatch, capsys):
    base = ["generate", "-c", str(cjk_run), "-p", "春眠", "-n", "60", "--greedy", "--json"]
    full = json.loads(cli(monkeypatch, capsys, *base)[1])["text"]
    stop = full[5:7]
    code, out, _ = cli(monkeypatch, capsys, *base, "--stop", stop, "--stop", "never-there")
    record = json.loads(out)
    assert record["text"] == full[:full.index(stop)] and record["finish_reason"] == "stop"
    code, streamed, _ = cli(monkeypatch, capsys, *base[:-1], "--stop", stop)
    assert streamed == record["text"]


def test_beams_and_samples_return_several_records(cjk_run, monkeypatch, capsys):
    code, out, _ = cli(monkeypatch, capsys, "generate", "-c", str(cjk_run), "-p", "春", "-n", "10", "--beams", "4",
                       "--num-return", "3", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["rank"] for r in records] == [0, 1, 2]
    assert records[0]["score"] >= records[1]["score"] >= records[2]["score"]
    code, out, _ = cli(monkeypatch, capsys, "generate", "-c", str(cjk_run), "-p", "春", "-n", "10",
                       "--num-samples", "3", "--seed", "1", "--json")
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["sample"] for r in records] == [0, 1, 2] and all(r["seed"] == 1 for r in records)
    code, again, _ = cli(monkeypatch, capsys, "generate", "-c", str(cjk_run), "-p", "春", "-n", "10",
                         "--num-samples", "3", "--seed", "1", "--json")
    assert [json.loads(x)["text"] for x in again.splitlines()] == [r["text"] for r in records]


def test_newest_run_is_the_default_checkpoint(cjk_run, monkeypatch, capsys):
    import shutil

    (cjk_run.parent / "checkpoints").mkdir()
    shutil.copytree(cjk_run, cjk_run.parent / "checkpoints" / "poems")
    code, out, err = cli(monkeypatch, capsys, "generate", "-p", "春", "-n", "5", "--greedy")
    assert code == 0 and "checkpoints/poems" in err


@pytest.mark.slow
def test_pipe_to_head_ends_quietly(cjk_run):
    cmd = (f"{sys.executable} -m gptcli generate -c {cjk_run} -p 春眠 -n 3000 --temperature 1.0 --seed 2 "
           f"| head -c 20 > /dev/null; echo \"${{PIPESTATUS[0]}}\"")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120, cwd=cjk_run.parent)
    assert proc.stdout.strip() == "0"
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


BAD_GENERATE = [
    (["--top-k", "0"], "--top-k"),
    (["--top-p", "0"], "--top-p"),
    (["--top-p", "1.5"], "--top-p"),
    (["--temperature", "-1"], "--temperature"),
    (["--beams", "0"], "--beams"),
    (["--beams", "2", "--num-return", "3"], "--num-return"),
    (["--max-new-tokens", "-1"], "--max-new-tokens"),
    (["--beams", "4", "--top-k", "5"], "--top-k"),
    (["--greedy", "--temperature", "0.5"], "--temperature"),
    (["-c", "nowhere"], "no such run folder"),
    (["-c", "."], "not a gptcli run folder"),
    (["-c", "run", "--prompts", "missing.txt"], "no such file"),
    (["-c", "run", "--prompts", "bad.jsonl"], "line 2"),
    (["-c", "corrupt"], "not a valid safetensors"),
    (["--prompt", "x", "--prompts", "bad.jsonl"], "exclusive"),
    (["--dtype", "bf16"], "--dtype must be float32, float16 or int8"),
    (["--dtype", "int8", "--device", "cuda"], "CUDA" if not torch.cuda.is_available() else "CPU only"),
    (["--dtype", "float16", "--device", "cuda"], "CUDA" if not torch.cuda.is_available() else "CPU only"),
]


@pytest.mark.parametrize("args, message", BAD_GENERATE, ids=[" ".join(a) for a, _ in BAD_GENERATE])
def test_bad_generate_input(cjk_run, monkeypatch, capsys, args, message):
    import shutil

    ws = cjk_run.parent
    (ws / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": 3\n')
    shutil.copytree(cjk_run, ws / "corrupt")
    (ws / "corrupt" / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    if "-c" not in args:
        args = ["-c", "run", *args]
    if "--prompts" not in args:
        args = ["-p", "春", *args]
    code, out, err = cli(monkeypatch, capsys, "generate", *args)
    assert_clean_error(code, out, err, match=message)


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_reduced_weights_generate_through_every_strategy(dtype, cjk_run, monkeypatch, capsys):
    """--dtype float16 / int8: greedy, sampled, beams and batches run and report their
    speed; the greedy text is the model's (equal to float32's here, where no two logits
    are close)."""
    if dtype == "float16" and not has_fp16_kernel():
        pytest.skip("this torch has no FBGEMM float16 kernel")
    ws = cjk_run.parent
    (ws / "p.txt").write_text("春\n夜来\n花落\n", encoding="utf-8")
    texts = {}
    for kind in ("float32", dtype):
        code, out, err = cli(monkeypatch, capsys, "generate", "-c", "run", "-p", "春眠", "-n", "30", "--greedy",
                             "--json", "--dtype", kind)
        assert code == 0, err
        texts[kind] = json.loads(out)["text"]
    assert texts[dtype] == texts["float32"]
    for args in (["-p", "春", "--seed", "3", "--top-k", "5"], ["-p", "春", "--beams", "3", "--num-return", "2"],
                 ["--prompts", "p.txt", "--greedy", "--batch-size", "2"]):
        code, out, err = cli(monkeypatch, capsys, "generate", "-c", "run", "-n", "12", "--json", "--dtype", dtype,
                             *args)
        assert code == 0, err
        records = [json.loads(line) for line in out.splitlines()]
        assert records and all(r["tokens_per_second"] > 0 and r["token_ids"] for r in records)


def test_float16_without_fbgemm_is_a_clear_error(cjk_run, monkeypatch, capsys):
    monkeypatch.setattr(engine, "has_fp16_kernel", lambda: False)
    code, out, err = cli(monkeypatch, capsys, "generate", "-c", "run", "-p", "春", "--dtype", "float16")
    assert_clean_error(code, out, err, match="needs FBGEMM")


def test_reduced_weights_are_refused_for_a_recurrent_run(isolated, monkeypatch, capsys):
    corpus = isolated / "c.txt"
    corpus.write_text(CJK * 50, encoding="utf-8")
    code, _, err = cli(monkeypatch, capsys, "train", str(corpus), "--arch", "lstm", "--n-layer", "1", "--n-embd", "16",
                       "--block-size", "16", "--batch-size", "2", "--eval-iters", "1", "--vocab-size", "300",
                       "--max-steps", "2", "--out", "lstm")
    assert code == 0, err
    for dtype in ("float16", "int8"):
        code, out, err = cli(monkeypatch, capsys, "generate", "-c", "lstm", "-p", "春", "--dtype", dtype)
        assert_clean_error(code, out, err, match=f"--dtype {dtype} applies to GPT models")


def test_no_model_anywhere_is_a_clear_error(monkeypatch, capsys, tmp_path):
    from gptcli import workspace

    monkeypatch.setattr(workspace, "SHIPPED", tmp_path / "not-shipped")
    code, out, err = cli(monkeypatch, capsys, "generate", "-p", "hi")
    assert_clean_error(code, out, err, match="no model found")
