"""`gptcli compare`: the RNN-vs-Transformer experiment on the user's own text.

Trains each architecture in turn with the same tokenizer, token cache, split, batch size,
recipe (AdamW unless --optimizer is given), seed and budget, each as large as the
preset's GPT, into DIR/<arch>/ (an ordinary run folder), then measures them side by
side: parameters, training speed, best validation bits per byte and bits per byte at
equal tokens, generation speed, and the validation loss by position in the context
window (with the scoring code `gptcli eval` uses). A failed arch is reported and the
others kept; Ctrl-C stops after the arch in training.
Writes DIR/summary.json, DIR/curves.png and DIR/position.png.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gptcli import plots
from gptcli.architectures import ARCHITECTURES
from gptcli.commands import inputs, train
from gptcli.config import SampleConfig, flag
from gptcli.console import Console
from gptcli.corpus import documents
from gptcli.data import random_windows
from gptcli.device import pick_device, pick_precision
from gptcli.errors import GptcliError, UsageError
from gptcli.generation.engine import Generator
from gptcli.scoring import score_windows
from gptcli.store import atomic, folders
from gptcli.store import checkpoint as ckpt

GENERATE_TOKENS = 128  # timed greedy tokens per arch
POSITION_WINDOWS = 1024  # validation windows (at random starts) averaged for the loss by position
EVAL_INTERVAL = 50  # compare evaluates more often than train, for curves worth drawing


@dataclass
class CompareRequest:
    paths: list[str]
    archs: list[str]  # in training order
    out: Path
    preset: str | None = None
    settings: dict = field(default_factory=dict)  # training settings for every arch
    val: list[str] = field(default_factory=list)
    overwrite: bool = False
    text_field: str | None = None  # the records' text field (JSON lines, Parquet); None: "text"


@dataclass
class CompareResult:
    out: Path
    records: list[dict]  # one per arch, in order: what summary.json holds
    equal_tokens: int | None  # the last evaluation every arch reached

    def curves(self) -> plots.Series:
        """Validation bits per byte against millions of tokens seen, per arch."""
        out = {}
        for r in self.records:
            if not r.get("error"):
                ev = _evals(self.out / r["arch"])
                out[r["arch"]] = ([m["tokens"] / 1e6 for m in ev], [m["val_bpb"] for m in ev])
        return out

    def to_json(self) -> dict:
        return {"out": str(self.out), "equal_tokens": self.equal_tokens, "archs": self.records}

    def to_text(self) -> str:
        at = f"val bpb @{self.equal_tokens:,} tok" if self.equal_tokens else "val bpb @equal tokens"
        head = ["arch", "params", "train tok/s", "tokens seen", "wall time", "best val bpb", at, "gen tok/s"]
        rows = [head]
        for r in self.records:
            if r.get("error"):
                rows.append([r["arch"], "", "", "", "", "", "", f"failed: {r['error']}"])
                continue
            rows.append([r["arch"], f"{r['params'] / 1e6:.2f}M", f"{r['train_tokens_per_second']:,.0f}",
                         f"{r['tokens_seen']:,}", f"{r['wall_seconds']:.0f}s", _num(r.get("best_val_bpb")),
                         _num(r.get("val_bpb_at_equal_tokens")), f"{r['generate_tokens_per_second']:,.0f}"])
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
        return "\n".join("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                         for row in rows)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def check_request(req: CompareRequest) -> None:
    if "-" in req.paths or "-" in req.val:
        raise UsageError("compare reads the corpus once per architecture: save stdin to a file and pass that")
    unknown = [a for a in req.archs if a not in ARCHITECTURES]
    if unknown:
        raise UsageError(f"--arch {unknown[0]} is not one of {', '.join(ARCHITECTURES)}")
    if len(set(req.archs)) != len(req.archs):
        raise UsageError("--arch names an architecture twice")
    shape = ("n_embd", *(name for a in ARCHITECTURES.values() for name, _ in a.unused))  # not every arch has these
    for name in dict.fromkeys(shape):
        if name in req.settings:
            raise UsageError(f"compare sizes and trains each architecture alike to match the preset's GPT: it takes "
                             f"no {flag(name)}")
    folders.check_out(req.out, req.overwrite, label=f"--out {req.out}", kind="a comparison folder",
                      is_kind=lambda p: (p / "summary.json").is_file())


def run(req: CompareRequest, console: Console) -> CompareResult:
    check_request(req)
    with documents(req.paths, console.warn, req.text_field), \
            documents(req.val, console.warn, req.text_field) if req.val else _nothing():
        pass  # a corpus every arch would fail on stops here, before any folder is made
    req.out.mkdir(parents=True, exist_ok=True)
    records: list[dict] = []
    for i, arch in enumerate(req.archs):
        console.info(f"compare: training {arch} ({i + 1} of {len(req.archs)}) -> {req.out / arch}")
        # one recipe for every arch: AdamW unless --optimizer says otherwise (a GPT alone
        # would otherwise get Muon, its own default)
        settings = {"eval_interval": EVAL_INTERVAL, "optimizer": "adamw", **req.settings, "arch": arch}
        run_req = train.TrainRequest(paths=req.paths, preset=req.preset, settings=settings,
                                     out=req.out / arch, val=req.val, overwrite=req.overwrite,
                                     text_field=req.text_field)
        try:
            result = train.run(run_req, console)
        except GptcliError as e:
            console.warn(f"compare: {arch} failed: {e}")
            records.append({"arch": arch, "error": str(e)})
            continue
        records.append({"arch": arch, "stop_reason": result.reason})
        if result.reason == "interrupted":
            console.warn("compare: interrupted; the archs not trained yet are skipped")
            break
    measured = [r for r in records if not r.get("error")]
    if measured:
        _measure(req, measured, console)
    equal = _equal_tokens(req.out, measured)
    for r in measured:
        r["val_bpb_at_equal_tokens"] = _bpb_at(req.out / r["arch"], equal) if equal else None
    result = CompareResult(req.out, records, equal)
    atomic.write_text(req.out / "summary.json", json.dumps(result.to_json(), indent=2) + "\n")
    if measured:
        _draw(req.out, measured)
    return result


def _measure(req: CompareRequest, records: list[dict], console: Console) -> None:
    """Each trained arch's figures: from its run folder, a timed greedy generation, and
    the validation loss by position (windows of the context, each from a fresh start)."""
    first = ckpt.load_run(req.out / records[0]["arch"])[1]
    with documents(req.paths, console.warn, req.text_field) as docs, \
            documents(req.val, console.warn, req.text_field) if req.val else _nothing() as val_docs:
        val = inputs.splits(docs, val_docs, first, _val_fraction(req.out / records[0]["arch"]), console)[1]
    device = pick_device(req.settings.get("device", "auto"))
    for r in records:
        run_dir = req.out / r["arch"]
        engine = Generator(run_dir, device=device.type)
        model, tok, summary = engine.model, engine.tokenizer, engine.run_config["training"]
        speeds = [m["tokens_per_sec"] for m in ckpt.read_metrics(run_dir) if m["type"] == "train"]
        block = model.config.block_size
        windows = torch.from_numpy(random_windows(val.tokens, block, POSITION_WINDOWS))
        score = score_windows(model, windows, torch.as_tensor(tok.token_byte_lengths(), device=device), batch_size=8,
                              precision=pick_precision("float32", device), by_position=True)
        r.update(params=model.num_params(), n_layer=model.config.n_layer, n_embd=model.config.n_embd,
                 tokens_seen=summary["tokens_seen"], wall_seconds=summary["elapsed_sec"],
                 train_tokens_per_second=statistics.median(speeds) if speeds else
                 summary["tokens_seen"] / max(summary["elapsed_sec"], 1e-9),
                 best_val_bpb=summary.get("best_val_bpb"), best_val_loss=summary.get("best_val_loss"),
                 loss_by_position=[round(float(x), 5) for x in score.loss_by_position],
                 **_generation(engine, [int(t) for t in val.tokens[:16]]))
        console.info(f"compare: measured {r['arch']}")


def _nothing():
    import contextlib

    return contextlib.nullcontext([])


def _val_fraction(run_dir: Path) -> float:
    return ckpt.read_config(run_dir)["training"]["config"].get("val_fraction", 0.1)


def _generation(engine: Generator, prompt: list[int]) -> dict:
    """Greedy tokens/s at batch 1 (end-of-text ignored, so every arch makes as many), and
    a short greedy sample for summary.json."""
    cfg = SampleConfig(strategy="greedy", max_new_tokens=GENERATE_TOKENS)
    tok, times = engine.tokenizer, []
    list(engine.steps([prompt], SampleConfig(strategy="greedy", max_new_tokens=8), stop_at_eot=False))  # warm up
    for _ in range(3):
        t0 = time.perf_counter()
        ids = [step[0][0] for step in engine.steps([prompt], cfg, stop_at_eot=False)]
        times.append(time.perf_counter() - t0)
    return {"generate_tokens_per_second": len(ids) / max(statistics.median(times), 1e-9),
            "sample": tok.decode(prompt) + tok.decode([i for i in ids[:60] if i != tok.eot_id])}


def _evals(run_dir: Path) -> list[dict]:
    return [m for m in ckpt.read_metrics(run_dir) if m["type"] == "eval"]


def _equal_tokens(out: Path, records: list[dict]) -> int | None:
    """The most tokens at which every arch was evaluated (they share batch and context,
    so a step is the same number of tokens for all)."""
    common = None
    for r in records:
        seen = {m["tokens"] for m in _evals(out / r["arch"])}
        common = seen if common is None else common & seen
    return max(common) if common else None


def _bpb_at(run_dir: Path, tokens: int) -> float | None:
    return next((m["val_bpb"] for m in _evals(run_dir) if m["tokens"] == tokens), None)


def _draw(out: Path, records: list[dict]) -> None:
    curves = {r["arch"]: _evals(out / r["arch"]) for r in records}
    by_time = {a: ([m["elapsed"] for m in ev], [m["val_bpb"] for m in ev]) for a, ev in curves.items()}
    by_tokens = {a: ([m["tokens"] / 1e6 for m in ev], [m["val_bpb"] for m in ev]) for a, ev in curves.items()}
    plots.lines(out / "curves.png", [
        ("validation bits per byte against wall time", "training time (s)", "val bits per byte", by_time),
        ("validation bits per byte against tokens seen", "tokens seen (millions)", "val bits per byte", by_tokens),
    ], f"gptcli compare in {out}: each architecture as large as the others, same data, batch and seed")
    positions = {r["arch"]: _binned(r["loss_by_position"]) for r in records}
    plots.lines(out / "position.png", [
        ("mean validation loss by position in the context window", "position in the window (tokens of context, "
         "log scale)", "loss (nats per token)", positions)],
        f"{POSITION_WINDOWS} validation windows, positions averaged in bins that double in width:\n"
        "a model that uses distant context keeps lowering its loss at later positions", columns=1, log_x=True)


def _binned(losses: list[float]) -> tuple[list[float], list[float]]:
    """Mean loss over positions 1, 2, 3-4, 5-8, 9-16, ... split in halves: ~2 bins per
    doubling, plotted at each bin's mean position, so noise averages out where the
    positions are many."""
    xs, ys, start = [], [], 1
    while start <= len(losses):
        end = min(len(losses), max(start, int(start * 1.5)))
        xs.append((start + end) / 2)
        ys.append(sum(losses[start - 1:end]) / (end - start + 1))
        start = end + 1
    return xs, ys

