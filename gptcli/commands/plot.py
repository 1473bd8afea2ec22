"""`gptcli plot`: training and validation curves of one or more runs, from their
metrics.jsonl, as a PNG (loss and validation bits per byte against step, tokens and
time) and a chart for the terminal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptcli import plots
from gptcli.errors import UsageError
from gptcli.store import checkpoint as ckpt
from gptcli.store import folders


@dataclass
class PlotRequest:
    runs: list[Path]
    out: Path
    overwrite: bool = False  # replace an existing --out file


@dataclass
class PlotResult:
    out: Path
    series: dict[str, dict[str, list[float]]]  # run -> column -> values, for --json

    def to_json(self) -> dict:
        return {"out": str(self.out), "runs": self.series}

    def to_text(self) -> str:
        return f"wrote {self.out}"

    def terminal(self, width: int = 80, height: int = 20) -> str:
        return plots.terminal({run: (s["val_tokens"], s["val_bpb"]) for run, s in self.series.items()},
                              "validation bits per byte", "tokens seen", "bits/byte", width, height)


def _series(run: Path) -> dict[str, list[float]]:
    if not run.is_dir():
        raise UsageError(f"{run}: no such run folder" if not run.exists() else f"{run} is not a folder")
    if not (run / ckpt.METRICS).is_file():
        raise UsageError(f"{run} has no {ckpt.METRICS}: it is not a training run folder, so there is nothing to plot")
    metrics = ckpt.read_metrics(run)
    train = [m for m in metrics if m["type"] == "train"]
    evals = [m for m in metrics if m["type"] == "eval"]
    if not train and not evals:
        raise UsageError(f"{run}/{ckpt.METRICS} holds no records yet: train for a few steps first")
    return {key: [m[field] for m in rows] for key, rows, field in (
        ("train_step", train, "step"), ("train_tokens", train, "tokens"), ("train_time", train, "elapsed"),
        ("train_loss", train, "loss"), ("val_step", evals, "step"), ("val_tokens", evals, "tokens"),
        ("val_time", evals, "elapsed"), ("val_loss", evals, "val_loss"), ("val_bpb", evals, "val_bpb"))}


def run(req: PlotRequest) -> PlotResult:
    folders.check_file_out(req.out, "--out", req.overwrite, reads=[r / ckpt.METRICS for r in req.runs])
    series = {str(r): _series(r) for r in req.runs}
    panels = []
    for x, xlabel in (("step", "optimizer step"), ("tokens", "tokens seen"), ("time", "training time (s)")):
        loss = {}
        for name, s in series.items():
            loss[f"{name} (train)"] = (s[f"train_{x}"], s["train_loss"])
            loss[f"{name} (val)"] = (s[f"val_{x}"], s["val_loss"])
        panels.append((f"loss against {xlabel}", xlabel, "loss (nats per token)", loss))
    for x, xlabel in (("step", "optimizer step"), ("tokens", "tokens seen"), ("time", "training time (s)")):
        bpb = {name: (s[f"val_{x}"], s["val_bpb"]) for name, s in series.items()}
        panels.append((f"validation bits per byte against {xlabel}", xlabel, "val bits per byte", bpb))
    dashed = {f"{name} (val)" for name in series}
    plots.lines(req.out, panels, f"training curves: {', '.join(series)}", columns=3, dashed=dashed)
    return PlotResult(req.out, series)
