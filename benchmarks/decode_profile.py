"""Where gptcli's greedy batch-1 step spends its time, beside llama.cpp's per token on the
same weights: the shipped `tiny` model and a random gpt2-shaped one (generate.py's shapes).

For each shape and gptcli weight kind it decodes --new greedy tokens at batch 1 after a
16-token prompt and reports, per token:

  wall        the whole loop (Generator.steps: decoder step, argmax, .tolist()), no profiler
  parts       each part alone, called as the step calls it, --reps times: the four products
              of every block, lm_head, attention over the mean cached length, the layer norms
  ops         under torch.profiler: aten ops per token, and each group's share of their
              self CPU time (products, attention, norms, elementwise, cache copy, embedding,
              argmax, views); the wall beyond the parts is Python and dispatch between them

and llama.cpp (f32, f16, q8_0 GGUF from export-gguf) per token through llama-cpp-python
(wall) and by llama.cpp's own clock (llama_perf_context: the graph's compute), the rest
being the binding's Python. Each engine in its own process, as the other benchmarks.

    python benchmarks/decode_profile.py --shapes tiny gpt2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from generate import LLAMA, prepare, prompts_for  # generate puts tests/ on sys.path

GROUPS = (("products", ("bmm", "baddbmm", "addmm", "mm", "linear_pointwise", "fbgemm", "int8pack")),
          ("attention", ("scaled_dot_product", "attention")), ("norms", ("layer_norm",)),
          ("elementwise", ("add", "gelu", "mul", "tanh")), ("cache copy", ("copy_",)),
          ("embedding", ("embedding", "index_select")), ("argmax", ("argmax", "local_scalar", "item")))


def group_of(op: str) -> str:
    name = op.split("::")[-1]
    return next((g for g, keys in GROUPS if any(k in name for k in keys)), "views and other")


def per_token(fn, reps: int) -> float:
    """Median microseconds of fn() over 5 batches of reps calls."""
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        runs.append((time.perf_counter() - t) / reps * 1e6)
    return statistics.median(runs)


def gptcli_profile(folder: Path, dtype: str, new: int, reps: int, threads: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from gptcli.config import SampleConfig
    from gptcli.generation.engine import Generator
    from gptcli.model import norm, sdpa

    torch.set_num_threads(threads)
    gen = Generator(folder / "run", device="cpu", dtype=dtype)
    prompt, cfg = prompts_for(folder, 16)["greedy"][0], SampleConfig(strategy="greedy", max_new_tokens=new)
    c = gen.config
    walls = []
    for _ in range(4):  # the first warms up
        t = time.perf_counter()
        list(gen.steps([prompt], cfg, stop_at_eot=False))
        walls.append((time.perf_counter() - t) / new * 1e6)
    steps = gen.steps([prompt], cfg, stop_at_eot=False)
    next(steps)  # the prefill and the first token
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in steps:
            pass
    ops, calls = defaultdict(float), 0
    for e in prof.key_averages():
        ops[group_of(e.key)] += e.self_cpu_time_total
        calls += e.count if e.key.startswith("aten::") else 0
    total = sum(ops.values())
    layers, head = gen.prepared.layers(1)
    x, hd, past = torch.randn(1, c.n_embd), c.n_embd // c.n_head, len(prompt) + new // 2
    q, k, v = torch.randn(1, c.n_head, 1, hd), torch.randn(1, c.n_head, past, hd), torch.randn(1, c.n_head, past, hd)
    ln = (torch.ones(c.n_embd), torch.zeros(c.n_embd))
    wide, residual = layers[0][4](x), x.clone()
    with torch.inference_mode():  # a block: qkv, proj (added in place), fc with GELU, out (added in place)
        parts = {"products of the blocks": per_token(lambda: [(b[1](x), b[2].add_to(residual, x), b[4](x),
                                                               b[5].add_to(residual, wide)) for b in layers], reps),
                 "lm_head": per_token(lambda: head(x), reps),
                 "attention": per_token(lambda: [sdpa(q, k, v, None, False) for _ in layers], reps),
                 "layer norms": per_token(lambda: [norm(x, ln, c.layer_norm_eps) for _ in range(2 * c.n_layer + 1)],
                                          reps)}
    return {"wall_us": statistics.median(walls[1:]), "parts_us": parts, "aten_ops_per_token": calls / (new - 1),
            "op_shares": {g: t / total for g, t in sorted(ops.items(), key=lambda kv: -kv[1])}}


def llama_profile(folder: Path, dtype: str, new: int, threads: int) -> dict:
    from llama_peer import Peer, import_llama_cpp

    llama_cpp = import_llama_cpp()
    block = json.loads((folder / "run" / "config.json").read_text())["model"]["block_size"]
    peer = Peer(folder / f"{dtype}.gguf", block, threads, logits_all=False)
    prompt = prompts_for(folder, 16)["greedy"][0]
    walls, evals = [], []
    for i in range(4):
        llama_cpp.llama_perf_context_reset(peer.llm._ctx.ctx)
        t = time.perf_counter()
        peer.greedy(prompt, new, stop_at_eos=False)
        wall = time.perf_counter() - t
        perf = llama_cpp.llama_perf_context(peer.llm._ctx.ctx)
        if i:
            walls.append(wall / new * 1e6)
            evals.append(perf.t_eval_ms * 1e3 / max(perf.n_eval, 1))
    return {"wall_us": statistics.median(walls), "eval_us": statistics.median(evals)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", choices=("tiny", "gpt2"), default=["tiny", "gpt2"])
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--reps", type=int, default=50, help="calls per timed batch of each part")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        folder = Path(spec["folder"])
        out = llama_profile(folder, spec["dtype"], args.new, args.threads) if spec["engine"] == "llama.cpp" else \
            gptcli_profile(folder, spec["dtype"], args.new, args.reps, args.threads)
        print(json.dumps(out))
        return
    for shape in args.shapes:
        with tempfile.TemporaryDirectory(prefix=f"gptcli-profile-{shape}-") as tmp:
            folder = Path(tmp)
            prepare(shape, folder, ct2=False, gguf=tuple(LLAMA.values()))
            for engine, dtype in [("gptcli", d) for d in ("float32", "float16", "int8")] + \
                                 [("llama.cpp", d) for d in LLAMA.values()]:
                spec = json.dumps({"engine": engine, "dtype": dtype, "folder": str(folder)})
                done = subprocess.run([sys.executable, __file__, "--worker", spec, "--new", str(args.new), "--reps",
                                       str(args.reps), "--threads", str(args.threads)],
                                      capture_output=True, text=True, check=True)
                r = json.loads(done.stdout.splitlines()[-1])
                line = f"{shape:<5} {engine:<9} {dtype:<8} {r['wall_us']:>8,.0f} us/token"
                if engine == "llama.cpp":
                    line += f"  llama.cpp's own eval {r['eval_us']:,.0f} us, binding {r['wall_us'] - r['eval_us']:,.0f}"
                else:
                    parts = sum(r["parts_us"].values())
                    line += "  parts: " + ", ".join(f"{k} {v:,.0f}" for k, v in r["parts_us"].items()) + \
                            f" (sum {parts:,.0f}; rest {r['wall_us'] - parts:,.0f})  " \
                            f"{r['aten_ops_per_token']:.0f} aten ops/token, op time: " + \
                            ", ".join(f"{g} {s:.0%}" for g, s in r["op_shares"].items())
                print(line, flush=True)


if __name__ == "__main__":
    main()
