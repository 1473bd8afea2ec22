"""Speed on a shared CPU: gptcli and CTranslate2 alone, beside one busy process, and
beside a second copy of themselves, on the same machine in one run.

Each case runs in a fresh process and reports its own speed: `gptcli generate --json`'s
tokens_per_second, `gptcli train`'s tokens_per_sec (the median of its logged intervals
after the first), and CTranslate2's tokens a second over a timed generate_tokens loop on
the shipped model's weights (converted as benchmarks/generate.py does). The conditions:

  alone     nothing else running
  busy      beside one single-threaded busy loop (a browser tab, an editor, a build job)
  pair      two copies of the case at once, each measured (a second experiment; the second
            training starts 5 s after the first)

The conditions take turns within each repeat, so a drifting machine moves all alike; each
figure is the median over --repeats. It prints each case's speed in each condition, the
slowdown against alone (busy: at most 2x is the target on 2 cores; pair: each copy at
least 0.45 of alone) and the CPU's model and flags.

    pip install -e ".[dev]" && python benchmarks/contention.py
    python benchmarks/contention.py --cases greedy train --repeats 5
    python benchmarks/contention.py --variant passive=OMP_WAIT_POLICY=PASSIVE --variant one=--threads=1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import prepare, prompts_for  # noqa: E402 (the same weights and prompts as the speed benchmark)

CORPUS = Path(__file__).resolve().parents[1] / "gptcli" / "assets" / "tinyshakespeare.txt"
CASES = {  # name: what runs
    "greedy": ["generate", "--greedy"],
    "greedy-fp16": ["generate", "--greedy", "--dtype", "float16"],
    "beam4": ["generate", "--beams", "4"],
    "train": ["train"],
    "ct2-greedy": ["ct2", "1"],
    "ct2-beam4": ["ct2", "4"],
}
CONDITIONS = ("alone", "busy", "pair")
STAGGER = 5.0  # seconds between the two trainings of a pair (the second finds the first running)

CT2_SCRIPT = """
import json, pathlib, sys, time, ctranslate2
gen = ctranslate2.Generator(sys.argv[1], device="cpu", intra_threads=int(sys.argv[2]), inter_threads=1)
vocab = json.loads((pathlib.Path(sys.argv[1]) / "vocabulary.json").read_text())
prompt, beams, new = [vocab[int(t)] for t in sys.argv[3].split(",")], int(sys.argv[4]), int(sys.argv[5])
def run():
    t = time.perf_counter()
    gen.generate_batch([prompt], max_length=new, min_length=new, beam_size=beams, include_prompt_in_result=False)
    return new / (time.perf_counter() - t)
run()
print(max(run() for _ in range(3)))
"""


def cpu_line() -> str:
    """The CPU's model and the flags that decide gptcli's paths."""
    from gptcli.device import cpu_caps

    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 "unknown CPU")
    return f"{model}, {len(os.sched_getaffinity(0))} CPUs: {cpu_caps().describe()}"


def command(case: str, folder: Path, variant: list[str], out: Path) -> list[str]:
    """The case's command line; `variant` holds gptcli flags (--threads=N), which
    CTranslate2 takes as its intra_threads."""
    from gptcli.tokenizer import BPETokenizer

    kind, *flags = CASES[case]
    gptcli = [sys.executable, "-m", "gptcli"]
    threads = [a for a in variant if a.startswith("--threads")]
    prompt = prompts_for(folder, 16)["greedy"][0]
    if kind == "generate":
        text = BPETokenizer.load(folder / "run" / "tokenizer.json").decode(prompt)
        return [*gptcli, "generate", "-c", str(folder / "run"), "-p", text, "-n", "200", "--json", *flags, *threads]
    if kind == "train":
        return [*gptcli, "train", str(CORPUS), "--tokenizer", str(folder / "run"), "--out", str(out), "--overwrite",
                "--max-steps", "14", "--log-interval", "2", "--eval-interval", "1000", "--eval-iters", "1", "-q",
                *threads]
    ids = ",".join(str(t) for t in prompt)
    n = next((a.split("=", 1)[1] for a in threads), str(len(os.sched_getaffinity(0))))
    return [sys.executable, "-c", CT2_SCRIPT, str(folder / "ct2"), n, ids, flags[0], "200"]


def speed(case: str, proc: subprocess.Popen, out: Path) -> float:
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{case} failed ({proc.returncode}): {stderr.strip()[-500:]}")
    if CASES[case][0] == "generate":
        return json.loads(stdout.splitlines()[0])["tokens_per_second"]
    if CASES[case][0] == "train":
        rates = [r["tokens_per_sec"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                 if r.get("type") == "train"]
        return statistics.median(rates[1:])
    return float(stdout.strip())


def measure(case: str, condition: str, folder: Path, variant: list[str], env: dict) -> list[float]:
    """The case's speed in the condition: one figure, or two for a pair."""
    copies = 2 if condition == "pair" else 1
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])] if condition == "busy" else []
    try:
        if procs:
            time.sleep(0.5)
        outs = [folder / f"train-{i}" for i in range(copies)]
        cases = []
        for i, o in enumerate(outs):
            if i and CASES[case][0] == "train":
                time.sleep(STAGGER)  # a second experiment starts while the first trains
            cases.append(subprocess.Popen(command(case, folder, variant, o), env=env, cwd=folder,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            procs.append(cases[-1])
        return [speed(case, p, o) for p, o in zip(cases, outs)]
    finally:  # nothing of a run outlives it, whatever ended it
        for p in procs:
            p.kill()
            p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pause", type=float, default=1.0, help="Seconds between runs.")
    ap.add_argument("--variant", action="append", default=[],
                    help="NAME=SETTING[,SETTING...]: also measure with these environment variables (KEY=VALUE) "
                         "or gptcli flags (--threads=N); repeatable. 'default' always runs.")
    args = ap.parse_args()
    variants = {"default": []}
    for v in args.variant:
        name, _, settings = v.partition("=")
        variants[name] = settings.split(",") if settings else []
    print(f"cpu      {cpu_line()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        prepare("tiny", folder, ct2=any(c.startswith("ct2") for c in args.cases))
        for case in args.cases:
            for name, settings in variants.items():
                env = {**os.environ, **dict(s.split("=", 1) for s in settings if not s.startswith("--"))}
                flags = [s for s in settings if s.startswith("--")]
                got = {c: [] for c in args.conditions}
                for _ in range(args.repeats):
                    for condition in args.conditions:
                        time.sleep(args.pause)
                        got[condition] += measure(case, condition, folder, flags, env)
                alone = statistics.median(got["alone"]) if got.get("alone") else None
                cells = []
                for condition, rates in got.items():
                    med = statistics.median(rates)
                    vs = f" ({alone / med:.2f}x slower)" if alone and condition == "busy" else \
                        f" ({med / alone:.2f} of alone)" if alone and condition == "pair" else ""
                    cells.append(f"{condition} {med:,.0f}{vs}")
                print(f"{case:12s} {name:10s} " + " | ".join(cells) + " tok/s", flush=True)


if __name__ == "__main__":
    main()
