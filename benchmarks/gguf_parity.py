"""gptcli against llama.cpp on the same weights, through `gptcli export-gguf`.

Exports a run as float32, float16 and q8_0 GGUF and reports:

  parity   token ids of llama.cpp's tokenizer that equal gptcli's on mixed text (English,
           Chinese, code, emoji, runs of whitespace); greedy tokens of llama.cpp (each
           dtype) that equal gptcli float32's, from --prompts prompts of the held-out text,
           --parity-new tokens each; and the largest logit difference from gptcli float32
           at every position of the mixed text, as a fraction of the largest logit
  quality  bits per byte of the held-out last 10% of tinyshakespeare: gptcli float32 and
           llama.cpp f32, f16, q8_0, each scoring windows of block_size in one forward
  speed    greedy tokens/s at batch 1 (a 16-token prompt, --new tokens, end-of-text
           ignored) and prefill tokens/s of a block_size-token prompt, for gptcli float32,
           float16, int8 and llama.cpp f32, f16, q8_0; the median of --repeats

The run is the shipped model (--shape shipped), a second shape (--shape small-8k: 6
layers, 384 wide, 6 heads, a vocabulary of 8,192 trained on tinyshakespeare, the model
trained by `gptcli train` for --train-time, once, into ~/.cache/gptcli-bench/), or --run.
Each engine is timed in its own worker process (two OpenMP runtimes in one process slow
each other down). llama.cpp is llama-cpp-python's build from benchmarks/setup_llama_cpp.sh,
driven through tests/llama_peer.py, so its figures include that binding's Python calls.

    bash benchmarks/setup_llama_cpp.sh && python benchmarks/gguf_parity.py
    python benchmarks/gguf_parity.py --shape small-8k --repeats 7
    python benchmarks/gguf_parity.py --run checkpoints/myrun --threads 4 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
CORPUS = REPO / "gptcli" / "assets" / "tinyshakespeare.txt"
SHAPES = {"shipped": None,  # gptcli train flags of each shape; the shipped model is trained already
          "small-8k": ["--preset", "small", "--vocab-size", "8192", "--optimizer", "muon", "--lr", "0.004",
                       "--batch-size", "4", "--warmup-steps", "20", "--eval-iters", "4", "--eval-interval", "1000000"]}
GGUF_DTYPES = ("float32", "float16", "q8_0")
GPTCLI_DTYPES = ("float32", "float16", "int8")


def export_gguf(run: Path, out: Path, dtype: str) -> None:
    """`gptcli export-gguf`, in its own process as a user runs it."""
    subprocess.run([sys.executable, "-m", "gptcli", "export-gguf", str(run), str(out), "--dtype", dtype],
                   check=True, capture_output=True)


def shape_run(shape: str, train_time: str) -> Path:
    """The run folder of a shape: the shipped model, or one trained once (tokenizer and
    model, on the whole tinyshakespeare) into the benchmark cache."""
    if SHAPES[shape] is None:
        return REPO / "gptcli" / "assets" / "default"
    from llama_peer import CACHE

    home = CACHE.parent / f"{shape}-{train_time}"
    if not (home / "run" / "config.json").exists():
        home.mkdir(parents=True, exist_ok=True)
        print(f"training {shape} for {train_time} in {home} (once)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "gptcli", "train", str(CORPUS), *SHAPES[shape], "--max-time",
                        train_time, "--out", "run", "--overwrite", "-q"], cwd=home, check=True,
                       env={**os.environ, "GPTCLI_CACHE_DIR": str(home / "cache")})
    return home / "run"


def held_out() -> str:
    text = CORPUS.read_text(encoding="utf-8")
    return text[int(len(text) * 0.9):]


# -- one engine, in a worker process -------------------------------------------------


def gptcli_engine(run: Path, dtype: str, threads: int):
    """(greedy(ids, n) -> ids, logits(ids) -> (T, vocab) float32 array, prefill(ids),
    tokenize(text) -> ids) of gptcli."""
    import torch

    from gptcli.config import SampleConfig
    from gptcli.generation.engine import Generator

    torch.set_num_threads(threads)
    gen = Generator(run, device="cpu", dtype=dtype)

    def greedy(ids, n, stop_at_eos=False):
        cfg = SampleConfig(strategy="greedy", max_new_tokens=n)
        return [s[0][0] for s in gen.steps([ids], cfg, stop_at_eot=stop_at_eos)]

    def logits(ids):
        with torch.inference_mode():
            return gen.model(torch.tensor([ids]))[0][0].float().numpy()

    def prefill(ids):
        with torch.inference_mode():
            return gen.decoder().prefill([ids])

    return greedy, logits, prefill, gen.tokenizer.encode


def llama_engine(path: Path, n_ctx: int, threads: int):
    from llama_peer import Peer

    scorer, timer = Peer(path, n_ctx, threads), Peer(path, n_ctx, threads, logits_all=False)
    return ((lambda ids, n, stop_at_eos=False: timer.greedy(ids, n, stop_at_eos)), scorer.logits, timer.prefill,
            scorer.tokenize)


def bits_per_byte(logits_of, ids: list[int], token_bytes: list[bytes], block: int) -> float:
    import numpy as np

    nats, n_bytes = 0.0, 0
    for start in range(0, len(ids) - 1, block):
        window = ids[start:start + block + 1]
        if len(window) < 2:
            break
        logits = logits_of(window[:-1]).astype("float64")
        top = logits.max(-1, keepdims=True)
        logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
        nats -= float(sum(logp[t, window[t + 1]] for t in range(len(window) - 1)))
        n_bytes += sum(len(token_bytes[t]) for t in window[1:])
    return nats / math.log(2) / n_bytes


def worker(spec: dict) -> dict:
    import numpy as np

    from gptcli.tokenizer import BPETokenizer

    from llama_peer import MIXED, MIXED_TEXTS

    run = Path(spec["run"])
    tok = BPETokenizer.load(run / "tokenizer.json")
    block = spec["block"]
    if spec["engine"] == "gptcli":
        greedy, logits, prefill, tokenize = gptcli_engine(run, spec["dtype"], spec["threads"])
    else:
        greedy, logits, prefill, tokenize = llama_engine(Path(spec["gguf"]), block, spec["threads"])
    text = held_out()
    ids = tok.encode(text)
    lines = [tok.encode(line) for line in text.splitlines() if len(line) > 20][: spec["prompts"]]
    out = {"parity": [greedy(p, spec["parity_new"], stop_at_eos=True) for p in lines],
           "tokens": [tokenize(t) for t in MIXED_TEXTS]}
    if spec.get("logits_out"):
        np.save(spec["logits_out"], logits(tok.encode(MIXED)[:block]))
    if spec["quality"]:
        out["bits_per_byte"] = bits_per_byte(logits, ids, tok.token_bytes, block)
    prompt, long_prompt = ids[:16], ids[1000:1000 + block]
    greedy(prompt, 8)  # warm up: weights prepared, caches allocated
    prefill(long_prompt)
    decode, fill = [], []
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        made = len(greedy(prompt, spec["new"]))
        decode.append(made / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        prefill(long_prompt)
        fill.append(len(long_prompt) / (time.perf_counter() - t0))
    out.update(decode_tps=statistics.median(decode), prefill_tps=statistics.median(fill))
    return out


# -- the comparison -------------------------------------------------------------------


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Tokens equal before the first that differs (after it, the contexts differ)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if f in flags]
    return f"{name}; {' '.join(have) or 'no AVX2'}"


def shape_of(run: Path) -> str:
    cfg = json.loads((run / "config.json").read_text())["model"]
    return f"{cfg['n_layer']} layers, {cfg['n_embd']} wide, {cfg['n_head']} heads, vocabulary {cfg['vocab_size']}, " \
           f"context {cfg['block_size']}"


def call(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        sys.exit(f"worker {spec['engine']} {spec['dtype']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=SHAPES, default="shipped")
    ap.add_argument("--train-time", default="8m", help="--shape small-8k: how long gptcli trains it")
    ap.add_argument("--run", type=Path, help="a run folder instead of --shape's")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=128, help="greedy tokens per timed run")
    ap.add_argument("--parity-new", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    args.run = args.run or shape_run(args.shape, args.train_time)
    block = json.loads((args.run / "config.json").read_text())["model"]["block_size"]
    base = dict(run=str(args.run), block=block, threads=args.threads, new=args.new, parity_new=args.parity_new,
                prompts=args.prompts, repeats=args.repeats)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in GGUF_DTYPES:
            path = Path(tmp) / f"{dtype}.gguf"
            export_gguf(args.run, path, dtype)
            rows[f"llama.cpp {dtype}"] = call({**base, "engine": "llama.cpp", "dtype": dtype, "gguf": str(path),
                                               "quality": True, "logits_out": str(path.with_suffix(".npy"))})
        for dtype in GPTCLI_DTYPES:
            rows[f"gptcli {dtype}"] = call({**base, "engine": "gptcli", "dtype": dtype, "quality": dtype == "float32",
                                            "logits_out": str(Path(tmp) / "gptcli.npy") if dtype == "float32" else ""})
        ours = np.load(Path(tmp) / "gptcli.npy")
        for dtype in GGUF_DTYPES:
            theirs = np.load(Path(tmp) / f"{dtype}.npy")
            rows[f"llama.cpp {dtype}"]["logits_error"] = float(np.abs(ours - theirs).max() / np.abs(ours).max())
    ref, ref_tokens = rows["gptcli float32"]["parity"], rows["gptcli float32"]["tokens"]
    for row in rows.values():
        row["parity_equal"] = sum(_common_prefix(p, q) for p, q in zip(ref, row["parity"]))
        row["parity_outputs_equal"] = sum(p == q for p, q in zip(ref, row["parity"]))
        row["parity_tokens"] = sum(len(p) for p in ref)
        row["tokenize_equal"] = f"{sum(a == b for a, b in zip(ref_tokens, row['tokens']))}/{len(ref_tokens)} texts, " \
                                f"{sum(map(len, ref_tokens))} ids"
        del row["parity"], row["tokens"]
    report = {"machine": machine(), "run": str(args.run), "shape": shape_of(args.run), "threads": args.threads,
              "rows": rows, "date": time.strftime("%Y-%m-%d")}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['date']}  {report['machine']}  threads {args.threads}  run {args.run} ({report['shape']})")
    print(f"{'engine':<20} {'greedy tok/s':>12} {'prefill tok/s':>13} {'bits/byte':>9} {'greedy = gptcli f32':>22}"
          f" {'logits error':>12}  tokenizer = gptcli's")
    for name, row in rows.items():
        bpb = f"{row['bits_per_byte']:.4f}" if "bits_per_byte" in row else "-"
        same = f"{row['parity_equal']}/{row['parity_tokens']} ({row['parity_outputs_equal']}/{args.prompts})"
        err = f"{row['logits_error']:.1e}" if "logits_error" in row else "-"
        print(f"{name:<20} {row['decode_tps']:>12.0f} {row['prefill_tps']:>13.0f} {bpb:>9} {same:>22} {err:>12}  "
              f"{row['tokenize_equal']}")


if __name__ == "__main__":
    main()
