"""export-gguf: the file reads back with gguf's own reader (names, shapes, weights, metadata,
tokenizer), bad runs and outputs are refused cleanly, and, where llama.cpp is built
(benchmarks/setup_llama_cpp.sh), llama.cpp tokenizes, scores and decodes greedily as
gptcli does."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from gptcli.store import gguf_names
from gptcli.store.checkpoint import load_run
from gptcli.store.weights import weights_dict

from helpers import SHAKESPEARE, TINY_FLAGS, assert_clean_error, cli
from llama_peer import CACHE, MIXED, MIXED_TEXTS, PROMPTS, Peer, import_llama_cpp

gguf = pytest.importorskip("gguf")

SHIPPED = SHAKESPEARE.parent / "default"
# The second parity shape (6 layers, 384 wide, 6 heads, vocabulary 8,192), trained for 8
# minutes by `python benchmarks/gguf_parity.py --shape small-8k`; too slow to train here.
SMALL_8K = CACHE.parent / "small-8k-8m" / "run"


def _train(monkeypatch, capsys, out: str, *flags: str):
    base = TINY_FLAGS[:2] + TINY_FLAGS[4:] if "--arch" in flags else TINY_FLAGS  # a recurrent model has no heads
    code, _, err = cli(monkeypatch, capsys, "train", "corpus.txt", *base, "--max-steps", "20", "--out", out, *flags)
    assert code == 0, err
    return out


def _export(monkeypatch, capsys, run, out, *flags: str):
    code, stdout, err = cli(monkeypatch, capsys, "export-gguf", str(run), str(out), "--json", *flags)
    assert code == 0, err
    return json.loads(stdout)


def _llama_logits_error(run, path) -> float:
    """The largest |gptcli float32 - llama.cpp| logit over MIXED, relative to the largest logit."""
    model, tok, _ = load_run(run)
    ids = tok.encode(MIXED)[: model.config.block_size]
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0][0].numpy()
    theirs = Peer(path, n_ctx=model.config.block_size).logits(ids)
    return float(np.abs(ours - theirs).max() / np.abs(ours).max())


def _fields(path) -> tuple[dict, dict]:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items()}, {t.name: t for t in reader.tensors}


# -- the file ----------------------------------------------------------------------


def test_tensor_names_are_gguf_own_gpt2_names(trained_run):
    """Our table, checked against gguf's TensorNameMap (which llama.cpp's converter uses)."""
    model, _, _ = load_run(trained_run)
    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, model.config.n_layer)
    for name in weights_dict(model):
        assert gguf_names.gguf_name(name) == table.get_name(name, try_suffixes=(".weight", ".bias")), name


def test_float32_export_reads_back_with_every_weight_and_field(trained_run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "m.gguf"
    summary = _export(monkeypatch, capsys, trained_run, out)
    model, tok, _ = load_run(trained_run)
    cfg = model.config
    fields, tensors = _fields(out)
    assert summary["bytes"] == out.stat().st_size and summary["dtype"] == "float32"
    assert fields["general.architecture"] == "gpt2" and fields["general.name"] == "run"
    assert fields["gptcli.source_run"] == str(trained_run.resolve())
    assert fields["gptcli.version"] == __import__("gptcli").__version__
    assert (fields["gpt2.context_length"], fields["gpt2.embedding_length"], fields["gpt2.block_count"],
            fields["gpt2.attention.head_count"], fields["gpt2.feed_forward_length"]) == (
        cfg.block_size, cfg.n_embd, cfg.n_layer, cfg.n_head, 4 * cfg.n_embd)
    assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(cfg.layer_norm_eps)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens = fields["tokenizer.ggml.tokens"]
    assert tokens == [tok.tok.id_to_token(i) for i in range(tok.vocab_size)]
    types = fields["tokenizer.ggml.token_type"]
    assert types[tok.eot_id] == gguf.TokenType.CONTROL and types.count(gguf.TokenType.NORMAL) == tok.vocab_size - 1
    assert len(fields["tokenizer.ggml.merges"]) == tok.vocab_size - 257  # 256 bytes and <|endoftext|> merge nothing
    assert fields["tokenizer.ggml.bos_token_id"] == fields["tokenizer.ggml.eos_token_id"] == tok.eot_id
    assert fields["tokenizer.ggml.add_bos_token"] is False
    ours = weights_dict(model)
    assert "output.weight" not in tensors  # tied: llama.cpp's gpt2 falls back to token_embd
    assert set(tensors) == {gguf_names.gguf_name(n) for n in ours}
    for name, t in ours.items():
        stored = tensors[gguf_names.gguf_name(name)]
        assert stored.tensor_type == gguf.GGMLQuantizationType.F32
        assert np.array_equal(np.asarray(stored.data).reshape(t.shape), t.numpy()), name  # bit for bit


@pytest.mark.parametrize("dtype,matrix_type,tol", [("float16", "F16", 1e-3), ("q8_0", "Q8_0", 2e-2)])
def test_float16_and_q8_0_store_matrices_so_and_keep_vectors_float32(trained_run, tmp_path, monkeypatch, capsys,
                                                                     dtype, matrix_type, tol):
    """TINY_FLAGS' width (32) is a multiple of q8_0's block of 32, so every matrix is q8_0."""
    out = tmp_path / "m.gguf"
    _export(monkeypatch, capsys, trained_run, out, "--dtype", dtype)
    model, _, _ = load_run(trained_run)
    fields, tensors = _fields(out)
    assert fields["general.file_type"] == {"float16": 1, "q8_0": 7}[dtype]
    for name, t in weights_dict(model).items():
        stored = tensors[gguf_names.gguf_name(name)]
        want = matrix_type if t.dim() == 2 else "F32"
        assert stored.tensor_type.name == want, name
        back = gguf.quants.dequantize(np.asarray(stored.data), stored.tensor_type).reshape(t.shape)
        scale = float(t.abs().max())
        assert np.abs(back - t.numpy()).max() <= tol * scale, name


def test_no_bias_run_gets_zero_biases_llama_cpp_requires(isolated, small_corpus, tmp_path, monkeypatch, capsys):
    run = _train(monkeypatch, capsys, "nobias", "--no-bias")
    out = tmp_path / "m.gguf"
    _export(monkeypatch, capsys, run, out)
    _, tensors = _fields(out)
    biases = [n for n in tensors if n.endswith(".bias")]
    assert len(biases) == 6 * 1 + 1  # six per block, and the output norm's
    assert all(not np.asarray(tensors[n].data).any() for n in biases)


def test_q8_0_falls_back_to_float16_for_rows_not_a_multiple_of_32(isolated, small_corpus, tmp_path, monkeypatch,
                                                                   capsys):
    run = _train(monkeypatch, capsys, "w48", "--n-embd", "48", "--n-head", "2")
    out = tmp_path / "m.gguf"
    _export(monkeypatch, capsys, run, out, "--dtype", "q8_0")
    _, tensors = _fields(out)
    assert tensors["token_embd.weight"].tensor_type.name == "F16"  # rows of 48
    assert tensors["blk.0.ffn_down.weight"].tensor_type.name == "Q8_0"  # rows of 4 * 48 = 192


# -- refusals ----------------------------------------------------------------------


@pytest.mark.parametrize("flags,match", [(("--arch", "lstm"), "LSTM model"),
                                         (("--pos-encoding", "sinusoidal"), "--pos-encoding sinusoidal")])
def test_runs_gpt2_cannot_represent_are_refused(isolated, small_corpus, monkeypatch, capsys, flags, match):
    run = _train(monkeypatch, capsys, "bad", *flags)
    code, out, err = cli(monkeypatch, capsys, "export-gguf", run, "m.gguf")
    assert_clean_error(code, out, err, match=match)
    assert not (isolated / "m.gguf").exists()


def test_a_tokenizer_that_splits_otherwise_is_refused(trained_run, monkeypatch, capsys):
    doc = json.loads((trained_run / "tokenizer.json").read_text(encoding="utf-8"))
    doc["pre_tokenizer"]["add_prefix_space"] = True
    (trained_run / "tokenizer.json").write_text(json.dumps(doc), encoding="utf-8")
    config = json.loads((trained_run / "config.json").read_text(encoding="utf-8"))
    config["tokenizer"].pop("sha256")  # the edit is the point, not the hash check that would catch it first
    (trained_run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    code, out, err = cli(monkeypatch, capsys, "export-gguf", str(trained_run), "m.gguf")
    assert_clean_error(code, out, err, match="does not split text as GPT-2 does")


def test_existing_out_needs_overwrite_and_a_folder_is_refused(trained_run, isolated, monkeypatch, capsys):
    (isolated / "m.gguf").write_bytes(b"old")
    code, out, err = cli(monkeypatch, capsys, "export-gguf", str(trained_run), "m.gguf")
    assert_clean_error(code, out, err, match="pass --overwrite")
    assert (isolated / "m.gguf").read_bytes() == b"old"
    (isolated / "dir.gguf").mkdir()
    code, out, err = cli(monkeypatch, capsys, "export-gguf", str(trained_run), "dir.gguf", "--overwrite")
    assert_clean_error(code, out, err, match="is a folder")
    code, _, err = cli(monkeypatch, capsys, "export-gguf", str(trained_run), "m.gguf", "--overwrite")
    assert code == 0, err
    assert (isolated / "m.gguf").read_bytes()[:4] == b"GGUF"
    assert not [p for p in isolated.iterdir() if p.name.startswith(".")]  # no temp file left


def test_bad_dtype_and_a_missing_run_are_refused(trained_run, monkeypatch, capsys):
    code, out, err = cli(monkeypatch, capsys, "export-gguf", str(trained_run), "m.gguf", "--dtype", "int4")
    assert_clean_error(code, out, err, match="--dtype must be one of float32, float16, q8_0")
    code, out, err = cli(monkeypatch, capsys, "export-gguf", "nowhere", "m.gguf")
    assert_clean_error(code, out, err)


def test_without_the_gguf_package_it_says_what_to_install(trained_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    code, out, err = cli(monkeypatch, capsys, "export-gguf", str(trained_run), "m.gguf")
    assert_clean_error(code, out, err, match="pip install 'gptcli[gguf]'")


# -- llama.cpp itself --------------------------------------------------------------

llama = pytest.mark.skipif(import_llama_cpp() is None,
                           reason="llama_cpp is not built: run benchmarks/setup_llama_cpp.sh")


@pytest.fixture(scope="module")
def parity_runs(tmp_path_factory):
    """The shipped model, a tiny run of another shape (3 layers, 64 wide, 4 heads,
    vocabulary 512, context 160) and, where the benchmark trained it, SMALL_8K, each
    exported as float32 and float16 GGUF."""
    import subprocess

    folder = tmp_path_factory.mktemp("parity")
    (folder / "corpus.txt").write_text(SHAKESPEARE.read_text(encoding="utf-8")[:60000], encoding="utf-8")
    env = {"GPTCLI_CACHE_DIR": str(folder / "cache"), "PATH": "/usr/bin:/bin", "NO_COLOR": "1",
           **{k: v for k, v in __import__("os").environ.items() if k in ("PYTHONPATH", "HOME")}}
    flags = ["--n-layer", "3", "--n-head", "4", "--n-embd", "64", "--block-size", "160", "--vocab-size", "512",
             "--batch-size", "8", "--max-steps", "150", "--eval-iters", "2", "--out", "tiny", "-q"]
    subprocess.run([sys.executable, "-m", "gptcli", "train", "corpus.txt", *flags], cwd=folder, env=env, check=True,
                   capture_output=True)
    runs = {"shipped": SHIPPED, "tiny": folder / "tiny"}
    if (SMALL_8K / "config.json").exists():
        runs["small-8k"] = SMALL_8K
    for name, run in runs.items():
        for dtype in ("float32", "float16"):
            subprocess.run([sys.executable, "-m", "gptcli", "export-gguf", str(run),
                            str(folder / f"{name}-{dtype}.gguf"), "--dtype", dtype], env=env, check=True,
                           capture_output=True)
    return {name: (run, folder / f"{name}-float32.gguf") for name, run in runs.items()}


def _parity_run(parity_runs, which):
    if which not in parity_runs:
        pytest.skip(f"{SMALL_8K} is not trained: run python benchmarks/gguf_parity.py --shape small-8k")
    return parity_runs[which]


@llama
@pytest.mark.parametrize("which", ["shipped", "tiny", "small-8k"])
def test_llama_cpp_tokenizes_mixed_text_as_gptcli(parity_runs, which):
    run, path = _parity_run(parity_runs, which)
    _, tok, _ = load_run(run)
    peer = Peer(path, n_ctx=64)
    for text in MIXED_TEXTS:
        assert peer.tokenize(text) == tok.encode(text), repr(text)


@llama
@pytest.mark.parametrize("which", ["shipped", "tiny", "small-8k"])
def test_llama_cpp_greedy_100_tokens_equal_gptcli_float32(parity_runs, which):
    import gptcli

    run, path = _parity_run(parity_runs, which)
    g = gptcli.load(run)
    peer = Peer(path, n_ctx=g.config.block_size)
    for prompt in PROMPTS:
        ours = g.complete(prompt, greedy=True, max_new_tokens=100)[0].token_ids
        theirs = peer.greedy(g.tokenizer.encode(prompt), 100)
        assert theirs == ours, prompt


@llama
@pytest.mark.parametrize("which", ["shipped", "tiny", "small-8k"])
@pytest.mark.parametrize("dtype,bound", [("float32", 2e-3), ("float16", 5e-3)])
def test_llama_cpp_logits_agree_with_gptcli_float32(parity_runs, which, dtype, bound):
    """Every position of a prompt, as a fraction of the largest logit. Measured: float32
    1.3e-4 (shipped: 0.0025 on logits up to 19.9) and 1.0e-4 (tiny); float16 weights
    3.0e-4 for both. The bounds leave a 15x margin (docs/benchmarks.md)."""
    run, path = _parity_run(parity_runs, which)
    assert _llama_logits_error(run, path.with_name(f"{which}-{dtype}.gguf")) < bound


@llama
def test_llama_cpp_computes_a_no_bias_run_from_its_zero_biases(isolated, small_corpus, tmp_path, monkeypatch, capsys):
    run = _train(monkeypatch, capsys, "nobias", "--no-bias", "--block-size", "128")
    _export(monkeypatch, capsys, run, tmp_path / "m.gguf")
    assert _llama_logits_error(isolated / run, tmp_path / "m.gguf") < 2e-3
