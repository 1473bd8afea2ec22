"""Training recipes at equal wall time: validation bits per byte after a fixed budget.

Every recipe trains through the CLI (`gptcli train ... --max-time T`) on each corpus for
each budget and seed, and is scored with `gptcli eval` on the corpus's validation text
(the run's best checkpoint, every validation byte). Corpora, assembled offline:

  shakespeare  the shipped tinyshakespeare: the first 90% to train, the last 10% to validate
  python       the running interpreter's standard library (.py files, sorted by path):
               about 1 MB of files to train, the following files (about 110 KB) to validate

Each corpus gets one 4,096-token tokenizer, trained on its training text and shared by
every run. The table gives medians over the seeds of bits per byte, training tokens/s and
steps, and each recipe's change against `baseline` (today's default). Runs take turns,
one at a time: two at once would slow each other down and change what a budget buys.

    python benchmarks/time_to_quality.py --budgets 3m --seeds 1337 2
    python benchmarks/time_to_quality.py --recipes baseline muon --budgets 3m 10m
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT / "gptcli" / "assets" / "tinyshakespeare.txt"

# Each recipe: the flags it adds to `gptcli train --preset tiny`. `baseline` is the
# tiny preset's recipe on 2026-11-22 (AdamW, lr 2e-3, batch 16, 4 x 256, cosine);
# `default` is whatever the preset is when the benchmark runs.
RECIPES = {
    "default": [],  # whatever `--preset tiny` trains with now
    "baseline": ["--optimizer", "adamw", "--lr", "2e-3"],
    "muon": ["--optimizer", "muon", "--lr", "2e-3"],
    "muon-lr4e-3": ["--optimizer", "muon", "--lr", "4e-3"],
    "muon-lr1e-2": ["--optimizer", "muon", "--lr", "1e-2"],
    "adamw-lr3e-3": ["--optimizer", "adamw", "--lr", "3e-3"],
    "batch8": ["--optimizer", "adamw", "--lr", "2e-3", "--batch-size", "8"],
    "batch32": ["--optimizer", "adamw", "--lr", "2e-3", "--batch-size", "32"],
    "narrow-deep": ["--optimizer", "adamw", "--lr", "2e-3", "--n-layer", "6", "--n-embd", "192", "--n-head", "6"],
    "wide-shallow": ["--optimizer", "adamw", "--lr", "2e-3", "--n-layer", "2", "--n-embd", "384", "--n-head", "6"],
    "dropout0.1": ["--optimizer", "adamw", "--lr", "2e-3", "--dropout", "0.1"],
    "wsd": ["--optimizer", "adamw", "--lr", "2e-3", "--schedule", "wsd"],
    "muon-lr4e-3-wsd": ["--optimizer", "muon", "--lr", "4e-3", "--schedule", "wsd"],
    "muon-lr4e-3-dropout0.1": ["--optimizer", "muon", "--lr", "4e-3", "--dropout", "0.1"],
}


def corpora(work: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (training text, validation text), written under `work`."""
    out = {}
    text = SHAKESPEARE.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    out["shakespeare"] = _write(work / "shakespeare", text[:cut], text[cut:])
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.rglob("*.py") if "site-packages" not in p.parts and "test" not in p.parts)
    train, val, size = [], [], 0
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if size < 1_000_000:
            train.append(source)
        elif sum(map(len, val)) < 110_000:
            val.append(source)
        else:
            break
        size += len(source)
    out["python"] = _write(work / "python", "\n".join(train), "\n".join(val))
    return out


def _write(folder: Path, train: str, val: str) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text(train, encoding="utf-8")
    (folder / "val.txt").write_text(val, encoding="utf-8")
    return folder / "train.txt", folder / "val.txt"


def gptcli(*args: str, cwd: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "gptcli", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"gptcli {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def train_and_score(recipe: str, train: Path, val: Path, budget: str, seed: int, work: Path) -> dict:
    run = work / f"run-{recipe}-{budget}-{seed}"
    gptcli("train", str(train), "--val", str(val), "--preset", "tiny", "--tokenizer", str(train.parent / "tok"),
           "--max-time", budget, "--seed", str(seed), "--out", str(run), "--overwrite", *RECIPES[recipe],
           cwd=train.parent)
    score = json.loads(gptcli("eval", str(val), "-c", str(run), "--json", cwd=train.parent))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logs = [r for r in records if r["type"] == "train"]
    info = json.loads(gptcli("info", str(run), "--json", cwd=train.parent))["training"]
    tps = statistics.median(r["tokens_per_sec"] for r in logs[1:] or logs)
    return {"recipe": recipe, "budget": budget, "seed": seed, "bpb": score["bits_per_byte"], "tokens_per_sec": tps,
            "steps": info["steps"], "elapsed": info["elapsed_sec"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=["baseline", "default"])
    ap.add_argument("--corpora", nargs="+", choices=["shakespeare", "python"], default=["shakespeare", "python"])
    ap.add_argument("--budgets", nargs="+", default=["3m"], help="e.g. 3m 10m")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1337, 2])
    ap.add_argument("--json", dest="json_out", help="also write every run to this JSON file")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gptcli-ttq-") as tmp:
        work = Path(tmp)
        texts = corpora(work)
        for name in args.corpora:
            train, val = texts[name]
            gptcli("tokenizer", "train", str(train), "--vocab-size", "4096", "--out", str(train.parent / "tok"),
                   cwd=train.parent)
            print(f"{name}: {train.stat().st_size:,} bytes to train, {val.stat().st_size:,} to validate", flush=True)
            for budget in args.budgets:
                for seed in args.seeds:
                    for recipe in args.recipes:
                        row = {"corpus": name, **train_and_score(recipe, train, val, budget, seed, work)}
                        rows.append(row)
                        print(f"  {budget:>4} seed {seed:<5} {recipe:<13} {row['bpb']:.4f} bits/byte  "
                              f"{row['tokens_per_sec']:>7,.0f} tok/s  {row['steps']:>5} steps", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(rows, indent=2) + "\n")
    print_table(rows, args)


def print_table(rows: list[dict], args) -> None:
    print(f"\nmedians over seeds {', '.join(map(str, args.seeds))}")
    print(f"{'corpus':<12} {'budget':>6} {'recipe':<13} {'bits/byte':>9} {'vs baseline':>11} {'tok/s':>8} {'steps':>6}")
    for name in args.corpora:
        for budget in args.budgets:
            base = None
            for recipe in args.recipes:
                mine = [r for r in rows if (r["corpus"], r["budget"], r["recipe"]) == (name, budget, recipe)]
                if not mine:
                    continue
                bpb = statistics.median(r["bpb"] for r in mine)
                base = bpb if recipe == "baseline" else base
                change = f"{(bpb / base - 1) * 100:+.1f}%" if base and recipe != "baseline" else ""
                print(f"{name:<12} {budget:>6} {recipe:<13} {bpb:>9.4f} {change:>11} "
                      f"{statistics.median(r['tokens_per_sec'] for r in mine):>8,.0f} "
                      f"{statistics.median(r['steps'] for r in mine):>6,.0f}")


if __name__ == "__main__":
    main()
