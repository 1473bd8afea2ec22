"""gptcli against llama.cpp on the same weights, through `gptcli export-gguf`.

Exports a run (default: the shipped model) as float32, float16 and q8_0 GGUF and reports:

  parity   greedy tokens of llama.cpp (each dtype) that equal gptcli float32's, from
           --prompts prompts of the held-out text, --parity-new tokens each
  quality  bits per byte of the held-out last 10% of tinyshakespeare: gptcli float32 and
           llama.cpp f32, f16, q8_0, each scoring windows of block_size in one forward
  speed    greedy tokens/s at batch 1 (a 16-token prompt, --new tokens, end-of-text
           ignored) and prefill tokens/s of a block_size-token prompt, for gptcli float32,
           float16, int8 and llama.cpp f32, f16, q8_0; the median of --repeats

Each engine is timed in its own worker process (two OpenMP runtimes in one process slow
each other down). llama.cpp is llama-cpp-python's build from benchmarks/setup_llama_cpp.sh,
driven through tests/llama_peer.py, so its figures include that binding's Python calls.

    bash benchmarks/setup_llama_cpp.sh && python benchmarks/gguf_parity.py
    python benchmarks/gguf_parity.py --run checkpoints/myrun --threads 4 --json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
CORPUS = REPO / "gptcli" / "assets" / "tinyshakespeare.txt"
GGUF_DTYPES = ("float32", "float16", "q8_0")
GPTCLI_DTYPES = ("float32", "float16", "int8")


def export_gguf(run: Path, out: Path, dtype: str) -> None:
    """`gptcli export-gguf`, in its own process as a user runs it."""
    subprocess.run([sys.executable, "-m", "gptcli", "export-gguf", str(run), str(out), "--dtype", dtype],
                   check=True, capture_output=True)


def held_out() -> str:
    text = CORPUS.read_text(encoding="utf-8")
    return text[int(len(text) * 0.9):]


# -- one engine, in a worker process -------------------------------------------------


def gptcli_engine(run: Path, dtype: str, threads: int):
    """(greedy(ids, n) -> ids, logits(ids) -> (T, vocab) float32 array) of gptcli."""
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

    return greedy, logits, prefill


def llama_engine(path: Path, n_ctx: int, threads: int):
    from llama_peer import Peer

    scorer, timer = Peer(path, n_ctx, threads), Peer(path, n_ctx, threads, logits_all=False)
    return (lambda ids, n, stop_at_eos=False: timer.greedy(ids, n, stop_at_eos)), scorer.logits, timer.prefill


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
    from gptcli.tokenizer import BPETokenizer

    run = Path(spec["run"])
    tok = BPETokenizer.load(run / "tokenizer.json")
    block = spec["block"]
    if spec["engine"] == "gptcli":
        greedy, logits, prefill = gptcli_engine(run, spec["dtype"], spec["threads"])
    else:
        greedy, logits, prefill = llama_engine(Path(spec["gguf"]), block, spec["threads"])
    text = held_out()
    ids = tok.encode(text)
    lines = [tok.encode(line) for line in text.splitlines() if len(line) > 20][: spec["prompts"]]
    out = {"parity": [greedy(p, spec["parity_new"], stop_at_eos=True) for p in lines]}
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


def call(spec: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        sys.exit(f"worker {spec['engine']} {spec['dtype']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=REPO / "gptcli" / "assets" / "default")
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
    block = json.loads((args.run / "config.json").read_text())["model"]["block_size"]
    base = dict(run=str(args.run), block=block, threads=args.threads, new=args.new, parity_new=args.parity_new,
                prompts=args.prompts, repeats=args.repeats)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in GGUF_DTYPES:
            path = Path(tmp) / f"{dtype}.gguf"
            export_gguf(args.run, path, dtype)
            rows[f"llama.cpp {dtype}"] = call({**base, "engine": "llama.cpp", "dtype": dtype, "gguf": str(path),
                                               "quality": True})
        for dtype in GPTCLI_DTYPES:
            rows[f"gptcli {dtype}"] = call({**base, "engine": "gptcli", "dtype": dtype, "quality": dtype == "float32"})
    ref = rows["gptcli float32"]["parity"]
    for row in rows.values():
        row["parity_equal"] = sum(_common_prefix(p, q) for p, q in zip(ref, row["parity"]))
        row["parity_outputs_equal"] = sum(p == q for p, q in zip(ref, row["parity"]))
        row["parity_tokens"] = sum(len(p) for p in ref)
        del row["parity"]
    report = {"machine": machine(), "run": str(args.run), "threads": args.threads, "rows": rows,
              "date": time.strftime("%Y-%m-%d")}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{report['date']}  {report['machine']}  threads {args.threads}  run {args.run}")
    print(f"{'engine':<20} {'greedy tok/s':>12} {'prefill tok/s':>13} {'bits/byte':>9} {'greedy = gptcli f32':>22}")
    for name, row in rows.items():
        bpb = f"{row['bits_per_byte']:.4f}" if "bits_per_byte" in row else "-"
        same = f"{row['parity_equal']}/{row['parity_tokens']} ({row['parity_outputs_equal']}/{args.prompts})"
        print(f"{name:<20} {row['decode_tps']:>12.0f} {row['prefill_tps']:>13.0f} {bpb:>9} {same:>22}")


if __name__ == "__main__":
    main()
