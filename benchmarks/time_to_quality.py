"""Training recipes at equal wall time: validation bits per byte after a fixed budget.

Every recipe trains through the CLI (`gptcli train ... --max-time T`) on each corpus for
each budget and seed, and is scored with `gptcli eval` on the corpus's validation text
(the run's best checkpoint, every validation byte). Corpora, assembled offline:

  shakespeare  the shipped tinyshakespeare: the first 90% to train, the last 10% to validate
  python       the running interpreter's standard library (.py files, sorted by path):
               about 1 MB of files to train, the following files (about 150 KB) to validate

Each corpus gets one 4,096-token tokenizer, trained on its training text and shared by
every run. The table gives medians over the seeds of bits per byte, training tokens/s and
steps, and each recipe's change against `baseline` (the recipe before 2026-11-22). Runs
take turns, one at a time: two at once would slow each other down and change what a
budget buys.

    python benchmarks/time_to_quality.py --budgets 3m 10m --seeds 1337 2
    python benchmarks/time_to_quality.py --recipes baseline muon-lr4e-3 --budgets 3m --json runs.json
    python benchmarks/time_to_quality.py --table runs.json more-runs.json
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

# Each recipe: the flags it adds to `gptcli train --preset tiny`, complete, so that what
# a name measured does not move with the preset. `baseline` is the tiny preset's recipe
# until 2026-11-22 (AdamW, lr 2e-3, weight decay 0.1, no dropout, batch 16, 4 x 256,
# cosine), which `--optimizer adamw` still gives; `default` is whatever the preset is when
# the benchmark runs (since 2026-11-22 the settings of muon-wd0.5-dropout0.2-beyond4).


def adamw(*flags: str) -> list[str]:
    return ["--optimizer", "adamw", "--lr", "2e-3", *flags]


def muon(lr: str, weight_decay: str = "0.1", dropout: str = "0", attn_dropout: str | None = None,
         extra: tuple[str, ...] = ()) -> list[str]:
    """Muon at `lr`; dropout on the attention weights too unless attn_dropout says otherwise."""
    return ["--optimizer", "muon", "--lr", lr, "--weight-decay", weight_decay, "--dropout", dropout,
            "--attn-dropout", attn_dropout or dropout, *extra]


def beyond4(*extra: str) -> list[str]:
    """Muon, dropout 0.2 (none on attention) and weight decay 0.5, scaled by the run's passes
    over its text: none up to 4, all from 8."""
    return muon("4e-3", weight_decay="0.5", dropout="0.2", attn_dropout="0",
                extra=("--regularize-beyond", "4", *extra))


RECIPES = {
    "default": [],
    "baseline": adamw(),
    "muon": muon("2e-3"),
    "muon-lr4e-3": muon("4e-3"),
    "muon-lr1e-2": muon("1e-2"),
    "adamw-lr3e-3": ["--optimizer", "adamw", "--lr", "3e-3"],
    "batch8": adamw("--batch-size", "8"),
    "batch32": adamw("--batch-size", "32"),
    "narrow-deep": adamw("--n-layer", "6", "--n-embd", "192", "--n-head", "6"),
    "wide-shallow": adamw("--n-layer", "2", "--n-embd", "384", "--n-head", "6"),
    "dropout0.1": adamw("--dropout", "0.1"),
    "wsd": adamw("--schedule", "wsd"),
    "muon-lr4e-3-wsd": muon("4e-3", extra=("--schedule", "wsd")),
    "muon-lr4e-3-dropout0.1": muon("4e-3", dropout="0.1"),
    "muon-lr4e-3-dropout0.2": muon("4e-3", dropout="0.2", attn_dropout="0"),
    "muon-lr4e-3-dropout0.3": muon("4e-3", dropout="0.3", attn_dropout="0"),
    "muon-wd0.5-dropout0.2": muon("4e-3", weight_decay="0.5", dropout="0.2", attn_dropout="0"),
    "muon-wd0.5-dropout0.2-beyond4": beyond4(),
    # the same with one thing changed
    "beyond4-wsd": beyond4("--schedule", "wsd"),
    "beyond4-batch8": beyond4("--batch-size", "8"),
    "beyond4-batch32": beyond4("--batch-size", "32"),
    "beyond4-narrow-deep": beyond4("--n-layer", "6", "--n-embd", "192", "--n-head", "6"),
    "beyond4-wide-shallow": beyond4("--n-layer", "2", "--n-embd", "384", "--n-head", "6"),
    "muon-lr4e-3-epochs4": muon("4e-3", extra=("--epochs", "4")),
    "muon-lr4e-3-epochs6": muon("4e-3", extra=("--epochs", "6")),
    "muon-lr4e-3-epochs8": muon("4e-3", extra=("--epochs", "8")),
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
    ap.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), help="default: baseline default; with "
                    "--table, every recipe in the files")
    ap.add_argument("--corpora", nargs="+", choices=["shakespeare", "python"], default=["shakespeare", "python"])
    ap.add_argument("--budgets", nargs="+", default=["3m"], help="e.g. 3m 10m")
    ap.add_argument("--seeds", nargs="+", type=int, default=[1337, 2])
    ap.add_argument("--json", dest="json_out", help="also write every run to this JSON file")
    ap.add_argument("--keep", type=Path, help="train in this folder and keep the runs (default: a temporary one)")
    ap.add_argument("--table", nargs="+", type=Path, metavar="JSON",
                    help="train nothing: print the table of runs that earlier --json files recorded")
    args = ap.parse_args()
    if args.table:
        rows = [row for path in args.table for row in json.loads(path.read_text())]
        print_table([row for row in rows if args.recipes is None or row["recipe"] in args.recipes])
        return
    args.recipes = args.recipes or ["baseline", "default"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="gptcli-ttq-") as tmp:
        work = (args.keep or Path(tmp)).resolve()
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
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    """Medians over seeds per corpus, budget and recipe, each against `baseline`."""
    def ordered(key: str) -> list:
        return list(dict.fromkeys(r[key] for r in rows))

    recipes = sorted(ordered("recipe"), key=lambda name: name != "baseline")  # baseline first
    width = max(map(len, recipes + ["recipe"]))
    print(f"\nmedians over seeds {', '.join(map(str, sorted(set(ordered('seed')))))}")
    print(f"{'corpus':<12} {'budget':>6} {'recipe':<{width}} {'bits/byte':>9} {'vs baseline':>11} {'seeds':>5} "
          f"{'tok/s':>8} {'steps':>6}")
    for name in ordered("corpus"):
        for budget in ordered("budget"):
            base = None
            for recipe in recipes:
                mine = [r for r in rows if (r["corpus"], r["budget"], r["recipe"]) == (name, budget, recipe)]
                if not mine:
                    continue
                bpb = statistics.median(r["bpb"] for r in mine)
                base = bpb if recipe == "baseline" else base
                change = f"{(bpb / base - 1) * 100:+.1f}%" if base and recipe != "baseline" else ""
                print(f"{name:<12} {budget:>6} {recipe:<{width}} {bpb:>9.4f} {change:>11} {len(mine):>5} "
                      f"{statistics.median(r['tokens_per_sec'] for r in mine):>8,.0f} "
                      f"{statistics.median(r['steps'] for r in mine):>6,.0f}")


if __name__ == "__main__":
    main()
