"""gptcli's generation against CTranslate2, HF transformers and llama.cpp, on the same weights.

For each shape (the shipped `tiny` model, and random `small`, `medium` and `gpt2`-shaped
models with the shipped 4,096-token vocabulary) it writes a gptcli run folder, exports
it with `gptcli export-hf` (converted by `ct2-transformers-converter`) and with `gptcli
export-gguf` (f32, f16, q8_0, run by llama.cpp through tests/llama_peer.py), and times
every engine on the same prompts and token counts:

  greedy     one 16-token prompt, greedy            topk       the same, top-k 50 sampling
  beam4      the same, 4 beams                      batch8     8 prompts in one batch, greedy
  prompts64  64 prompts of various lengths (lines of the held-out text), greedy, one batch
  prefill    one prompt of 256 tokens (block_size if smaller) and one new token: tok/s
             counts the prompt's tokens (prompt processing)

llama.cpp runs greedy and prefill only (batch 1, through llama-cpp-python's Python calls
per token, as gptcli's figures include its own loop); build it first with
benchmarks/setup_llama_cpp.sh.

End-of-text is disabled everywhere, so every run makes exactly --new tokens per output.
Each engine runs in its own worker process (two OpenMP runtimes in one process slow each
other down: CTranslate2's threads spin after each call), the workers take turns with a
pause between, and each figure is the median over --repeats runs. Greedy and beam tokens
are compared with CTranslate2's and transformers' in float32: gptcli in float32 must equal
both. Reduced-precision weights (gptcli's float16 and int8, and CTranslate2's int8 as a
second yardstick) may change tokens: the table says whether they did, and --quality
scores gptcli's float16 and int8 against its float32 in bits per byte.
--cli also times what a user runs, `gptcli generate --json` in a fresh process, and
reports its tokens_per_second and its ratio to CTranslate2 timed alongside it.

    pip install -e ".[dev]" && python benchmarks/generate.py            # every shape
    python benchmarks/generate.py --shapes tiny --repeats 7 --cli --quality
    python benchmarks/generate.py --shapes gpt2 --device cuda           # on a GPU, against transformers
    python benchmarks/generate.py --shapes tiny gpt2 --cases greedy prefill \
        --engines gptcli gptcli-fp16 gptcli-int8 llama.cpp llama.cpp-f16 llama.cpp-q8_0
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

from gguf_parity import export_gguf  # puts tests/ on sys.path, for llama_peer

from llama_peer import import_llama_cpp

LLAMA = {"llama.cpp": "float32", "llama.cpp-f16": "float16", "llama.cpp-q8_0": "q8_0"}  # engine: GGUF dtype
ENGINES = ("gptcli", "gptcli-fp16", "gptcli-int8", "ctranslate2", "ctranslate2-int8", "transformers", *LLAMA)
CASES = ("greedy", "topk", "beam4", "batch8", "prompts64", "prefill")
LLAMA_CASES = ("greedy", "prefill")  # batch 1, greedy: what tests/llama_peer.py drives
SHAPES = ("tiny", "small", "medium", "gpt2")
CORPUS = Path(__file__).resolve().parents[1] / "gptcli" / "assets" / "tinyshakespeare.txt"


# -- the engines, one per worker process ---------------------------------------------


def load_engine(engine: str, folder: Path, threads: int, device: str = "cpu"):
    """A function (case, prompts, new) -> (outputs' token ids, tokens produced)."""
    if engine.startswith("gptcli"):
        import torch

        from gptcli.config import SampleConfig
        from gptcli.generation.engine import Generator

        torch.set_num_threads(threads)
        weights = {"gptcli": "float32", "gptcli-fp16": "float16", "gptcli-int8": "int8"}[engine]
        gen = Generator(folder / "run", device=device, dtype=weights)

        def run(case, prompts, new):
            if case == "beam4":
                cfg = SampleConfig(strategy="beam", num_beams=4, max_new_tokens=new)
                return [gen.beams(prompts[0], cfg, stop_at_eot=False)[0].tokens]
            if case == "topk":
                cfg = SampleConfig(strategy="sample", max_new_tokens=new, temperature=1.0, top_k=50, top_p=None)
                gens = [torch.Generator(device=device).manual_seed(i) for i in range(len(prompts))]
            else:
                cfg, gens = SampleConfig(strategy="greedy", max_new_tokens=new), None
            steps = list(gen.steps(prompts, cfg, gens, stop_at_eot=False))
            return [[s[0][i] for s in steps] for i in range(len(prompts))]
        return run
    if engine.startswith("ctranslate2"):
        import ctranslate2

        compute = "int8" if engine.endswith("int8") else "float32"
        gen = ctranslate2.Generator(str(folder / "ct2"), device=device, intra_threads=threads, inter_threads=1,
                                    compute_type=compute)
        vocab = json.loads((folder / "ct2" / "vocabulary.json").read_text())

        def run(case, prompts, new):
            kw = dict(max_length=new, min_length=new, include_prompt_in_result=False, max_batch_size=len(prompts))
            if case == "beam4":
                kw.update(beam_size=4)
            elif case == "topk":
                kw.update(sampling_topk=50, sampling_temperature=1.0)
            results = gen.generate_batch([[vocab[i] for i in p] for p in prompts], **kw)
            return [r.sequences_ids[0] for r in results]
        return run
    if engine in LLAMA:
        from llama_peer import Peer

        block = json.loads((folder / "run" / "config.json").read_text())["model"]["block_size"]
        peer = Peer(folder / f"{LLAMA[engine]}.gguf", block, threads, logits_all=False)
        return lambda case, prompts, new: [peer.greedy(prompts[0], new, stop_at_eos=False)]
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(threads)
    model = GPT2LMHeadModel.from_pretrained(folder / "hf").eval().to(device)

    def run(case, prompts, new):
        width = max(len(p) for p in prompts)  # left padding, as HF wants for generation
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        kw = dict(max_new_tokens=new, min_new_tokens=new, pad_token_id=0, eos_token_id=None, attention_mask=mask)
        with torch.inference_mode():
            if case == "beam4":
                out = model.generate(ids, num_beams=4, do_sample=False, early_stopping=False, **kw)[:1]
            elif case == "topk":
                out = model.generate(ids, do_sample=True, top_k=50, top_p=1.0, temperature=1.0, **kw)
            else:
                out = model.generate(ids, do_sample=False, **kw)
        return out[:, width:].tolist()
    return run


def worker(engine: str, folder: Path, threads: int, device: str) -> None:
    """Answer one JSON line per request on stdin: {"case", "prompts", "new"} -> {"seconds", "outputs"}.
    Outputs come back as lists, which waits for a GPU to finish before the clock stops."""
    run = load_engine(engine, folder, threads, device)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        t = time.perf_counter()
        outputs = run(req["case"], req["prompts"], req["new"])
        print(json.dumps({"seconds": time.perf_counter() - t, "outputs": outputs}), flush=True)


class Worker:
    def __init__(self, engine: str, folder: Path, threads: int, device: str = "cpu"):
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", engine, "--folder", str(folder),
                                      "--threads", str(threads), "--device", device],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        json.loads(self.proc.stdout.readline())

    def run(self, case: str, prompts: list[list[int]], new: int) -> dict:
        self.proc.stdin.write(json.dumps({"case": case, "prompts": prompts, "new": new}) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


# -- preparing the same weights for every engine --------------------------------------


def prepare(shape: str, folder: Path, ct2: bool = True, gguf: tuple[str, ...] = ()) -> None:
    """folder/run (gptcli), folder/hf (export-hf) and, when asked, folder/ct2 (CTranslate2's
    converter) and folder/DTYPE.gguf for each of `gguf` (export-gguf)."""
    import torch

    from gptcli import workspace
    from gptcli.config import ModelConfig, preset
    from gptcli.model import GPT
    from gptcli.store import checkpoint as ckpt
    from gptcli.store import weights
    from gptcli.tokenizer import BPETokenizer

    run = folder / "run"
    if shape == "tiny":  # the shipped, trained model
        subprocess.run(["cp", "-r", str(workspace.SHIPPED), str(run)], check=True)
    else:
        run.mkdir(parents=True)
        tok = BPETokenizer.load(workspace.SHIPPED / "tokenizer.json")
        dims = preset(shape)["model"] if shape != "gpt2" else dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)
        cfg = ModelConfig(vocab_size=tok.vocab_size, **{**dims, "dropout": 0.0})
        torch.manual_seed(0)
        ckpt.write_config(run, cfg, tok, training={})
        ckpt.write_tokenizer(run, tok)
        weights.save_weights(run / "model.safetensors", GPT(cfg))
    subprocess.run([sys.executable, "-m", "gptcli", "export-hf", str(run), str(folder / "hf")], check=True,
                   stdout=subprocess.DEVNULL)
    if ct2:
        subprocess.run(["ct2-transformers-converter", "--model", str(folder / "hf"), "--output_dir",
                        str(folder / "ct2")], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for dtype in gguf:
        export_gguf(run, folder / f"{dtype}.gguf", dtype)


def prompts_for(folder: Path, prompt_len: int) -> dict[str, list[list[int]]]:
    """The prompts of every case, in token ids, from the held-out last 10% of tinyshakespeare."""
    from gptcli.tokenizer import BPETokenizer

    tok = BPETokenizer.load(folder / "run" / "tokenizer.json")
    block = json.loads((folder / "run" / "config.json").read_text())["model"]["block_size"]
    text = CORPUS.read_text(encoding="utf-8")
    held_out = text[int(len(text) * 0.9):]
    ids = tok.encode(held_out)
    fixed = [ids[i * 97:i * 97 + prompt_len] for i in range(8)]
    lines = [tok.encode(line) for line in held_out.splitlines() if len(line) > 20][:64]
    return {"greedy": fixed[:1], "topk": fixed[:1], "beam4": fixed[:1], "batch8": fixed, "prompts64": lines,
            "prefill": [ids[1000:1000 + min(256, block)]]}


# -- measuring -----------------------------------------------------------------------


def compare_shape(shape: str, args, out: list[dict]) -> None:
    with tempfile.TemporaryDirectory(prefix=f"gptcli-bench-{shape}-") as tmp:
        folder = Path(tmp)
        prepare(shape, folder, ct2=any(e.startswith("ctranslate2") for e in args.engines),
                gguf=tuple(LLAMA[e] for e in args.engines if e in LLAMA))
        prompts = prompts_for(folder, args.prompt_len)
        workers = {e: Worker(e, folder, args.threads, args.device) for e in args.engines}
        try:
            for case in args.cases:
                able = {e: w for e, w in workers.items() if e not in LLAMA or case in LLAMA_CASES}
                row = measure(case, prompts[case], able, args)
                row["shape"] = shape
                out.append(row)
                print_row(row, args.engines)
            if args.quality and shape == "tiny":
                print_quality(folder / "run")
            if args.cli and shape == "tiny":
                print_cli(folder / "run", prompts, args, workers.get("ctranslate2"))
        finally:
            for w in workers.values():
                w.close()


def measure(case: str, prompts: list[list[int]], workers: dict[str, Worker], args) -> dict:
    times = {e: [] for e in workers}
    new = 1 if case == "prefill" else args.new
    outputs = {e: w.run(case, prompts, min(new, 8)) for e, w in workers.items()}  # warm up
    for _ in range(args.repeats):
        for engine, w in workers.items():
            time.sleep(args.pause)  # let the other engine's threads stop spinning
            result = w.run(case, prompts, new)
            times[engine].append(result["seconds"])
            outputs[engine] = result["outputs"]
    produced = len(prompts[0]) if case == "prefill" else new * (1 if case == "beam4" else len(prompts))
    row = {"case": case, "tok_s": {e: produced / statistics.median(t) for e, t in times.items()}}
    if case != "topk":
        ref = [outputs[e] for e in ("ctranslate2", "transformers", "llama.cpp") if e in outputs]
        row["identical"] = {e: all(o == r for r in ref) for e, o in outputs.items()}
    return row


def print_row(row: dict, engines: list[str]) -> None:
    tps = row["tok_s"]
    cells = "  ".join(f"{e} {tps[e]:>7,.0f}" for e in engines if e in tps)
    pairs = [("gptcli", "ctranslate2"), ("gptcli", "transformers"), ("gptcli-fp16", "ctranslate2"),
             ("gptcli-int8", "ctranslate2"), ("gptcli-int8", "ctranslate2-int8"), ("gptcli", "llama.cpp"),
             ("gptcli-fp16", "llama.cpp-f16"), ("gptcli-int8", "llama.cpp-q8_0")]
    ratios = "  ".join(f"{a}/{b} {tps[a] / tps[b]:.2f}x" for a, b in pairs if a in tps and b in tps)
    same = ""
    if "identical" in row:
        same = "  tokens equal: " + ", ".join(f"{e} {'yes' if v else 'no'}" for e, v in row["identical"].items()
                                              if e.startswith("gptcli"))
    print(f"{row['shape']:<7}{row['case']:<10} tok/s: {cells}  |  {ratios}{same}", flush=True)


def print_quality(run: Path) -> None:
    """Bits per byte of the held-out last 10% under float32, float16 and int8 weights, scored
    through the decoder's own step (teacher forcing), the path generation takes."""
    import torch

    from gptcli.generation.decoders import FastDecoder
    from gptcli.store import checkpoint as ckpt

    model, tok, _ = ckpt.load_run(run)
    text = CORPUS.read_text(encoding="utf-8")
    held_out = text[int(len(text) * 0.9):]
    ids, n_bytes = tok.encode(held_out), len(held_out.encode("utf-8"))
    block = model.config.block_size
    for weights in ("float32", "float16", "int8"):
        decoder, nats = FastDecoder(model, weights), 0.0
        with torch.inference_mode():
            for start in range(0, len(ids) - 1, block):
                window = ids[start:start + block + 1]
                logits = decoder.prefill([window[:1]])
                for t in range(1, len(window)):
                    nats -= float(logits.float().log_softmax(-1)[0, window[t]])
                    if t < len(window) - 1:
                        logits = decoder.step(torch.tensor([window[t]]))
        print(f"quality  {weights:<8} {nats / math.log(2) / n_bytes:.4f} bits/byte on the held-out 10% "
              f"({len(ids):,} tokens, windows of {block}, scored through FastDecoder.step)", flush=True)


def print_cli(run: Path, prompts: dict, args, peer: Worker | None) -> None:
    """What a user sees: `gptcli generate --json`'s tokens_per_second, median of --repeats
    fresh processes; each alternates with a CTranslate2 run of the same case (`peer`),
    so that the ratio compares figures taken in the same minutes of a noisy machine."""
    from gptcli.tokenizer import BPETokenizer

    text = BPETokenizer.load(run / "tokenizer.json").decode(prompts["greedy"][0])
    for dtype in ("float32", "float16", "int8") if args.device == "cpu" else ("float32",):
        for case, flags in (("greedy", ["--greedy"]), ("beam4", ["--beams", "4"])):
            rates, peer_rates = [], []
            for _ in range(args.repeats):
                time.sleep(args.pause)
                done = subprocess.run([sys.executable, "-m", "gptcli", "generate", "-c", str(run), "-p", text,
                                       "-n", str(args.new), "--dtype", dtype, "--device", args.device, "--json",
                                       *flags],
                                      capture_output=True, text=True, check=True)
                rates.append(json.loads(done.stdout)["tokens_per_second"])
                if peer is not None:
                    time.sleep(args.pause)
                    peer_rates.append(args.new / peer.run(case, prompts[case], args.new)["seconds"])
            ratio = f", CTranslate2 {statistics.median(peer_rates):,.0f} alongside: " \
                    f"{statistics.median(rates) / statistics.median(peer_rates):.2f}x" if peer_rates else ""
            print(f"cli      gptcli generate {' '.join(flags)} --dtype {dtype}: tokens_per_second "
                  f"{statistics.median(rates):,.0f} (median of {len(rates)}; min {min(rates):,.0f}, "
                  f"max {max(rates):,.0f}){ratio}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES))
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--engines", nargs="+", choices=ENGINES,
                    help="default: all on the CPU; gptcli and transformers on cuda")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="where gptcli, transformers and CTranslate2 run (float16 and int8 are CPU only)")
    ap.add_argument("--new", type=int, default=128, help="new tokens per output")
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2, help="threads per engine")
    ap.add_argument("--pause", type=float, default=0.3, help="seconds between runs")
    ap.add_argument("--quality", action="store_true", help="float16 and int8 against float32 in bits per byte (tiny)")
    ap.add_argument("--cli", action="store_true", help="time `gptcli generate` too (tiny)")
    ap.add_argument("--json", dest="json_out", help="also write the rows to this JSON file")
    ap.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.folder, args.threads, args.device)
    llama_cpp = import_llama_cpp()
    if args.engines is None:
        args.engines = [e for e in ENGINES if llama_cpp or e not in LLAMA] if args.device == "cpu" else \
            ["gptcli", "transformers"]
    if args.device == "cuda" and set(args.engines) & {"gptcli-fp16", "gptcli-int8", "ctranslate2-int8", *LLAMA}:
        ap.error("float16, int8 and llama.cpp engines run on the CPU only")
    if set(args.engines) & set(LLAMA) and llama_cpp is None:
        ap.error("llama.cpp engines: llama_cpp is not built here; run benchmarks/setup_llama_cpp.sh")
    import torch
    import transformers

    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA GPU is visible to torch here")
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    if any(e.startswith("ctranslate2") for e in args.engines):
        import ctranslate2

        versions += f", ctranslate2 {ctranslate2.__version__}"
    if set(args.engines) & set(LLAMA):
        versions += f", llama-cpp-python {llama_cpp.__version__}"
    print(f"{versions}, {args.threads} threads per engine, {args.new} new tokens, medians of {args.repeats}",
          flush=True)
    rows: list[dict] = []
    for shape in args.shapes:
        compare_shape(shape, args, rows)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
