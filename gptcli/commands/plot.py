"""`gptcli plot`: training and validation curves of one or more runs, from their
metrics.jsonl, as a PNG (loss and validation bits per byte against step, tokens and
time) and a chart for the terminal."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    thinned: dict[str, dict[str, int]] = field(default_factory=dict)  # run -> "train"/"eval" -> every Nth record kept

    def to_json(self) -> dict:
        return {"out": str(self.out), "runs": self.series, "thinned": self.thinned}

    def to_text(self) -> str:
        notes = [f"{run}: 1 in {n} {kind} records" for run, every in self.thinned.items()
                 for kind, n in every.items()]
        return f"wrote {self.out}" + (f" (long metrics thinned: plotting {'; '.join(notes)}, and the last)"
                                      if notes else "")

    def terminal(self, width: int = 80, height: int = 20) -> str:
        return plots.terminal({run: (s["val_tokens"], s["val_bpb"]) for run, s in self.series.items()},
                              "validation bits per byte", "tokens seen", "bits/byte", width, height)


# What a record must hold to be drawn; checked as it is read, so an edited file is named
# by line rather than failing in the middle of drawing.
FIELDS = {"train": {"tokens": int, "elapsed": float, "loss": float},
          "eval": {"tokens": int, "elapsed": float, "val_loss": float, "val_bpb": float}}
COLUMNS = {"train": ("step", "tokens", "elapsed", "loss"), "eval": ("step", "tokens", "elapsed", "val_loss", "val_bpb")}


def _series(run: Path) -> tuple[dict[str, list[float]], dict[str, int]]:
    """A run's curves, and the stride each stream was thinned to: metrics.jsonl is read a
    line at a time and each stream kept under plots.MAX_POINTS rows."""
    if not run.is_dir():
        raise UsageError(f"{run}: no such run folder" if not run.exists() else f"{run} is not a folder")
    if not (run / ckpt.METRICS).is_file():
        raise UsageError(f"{run} has no {ckpt.METRICS}: it is not a training run folder, so there is nothing to plot")
    streams = {kind: plots.Thinned() for kind in COLUMNS}
    for m in ckpt.iter_metrics(run, FIELDS):
        if m["type"] in streams:
            streams[m["type"]].add(tuple(m[c] for c in COLUMNS[m["type"]]))
    if not any(s.seen for s in streams.values()):
        raise UsageError(f"{run}/{ckpt.METRICS} holds no records yet: train for a few steps first")
    train, evals = ([list(col) for col in zip(*streams[k].rows())] or [[] for _ in COLUMNS[k]] for k in COLUMNS)
    names = ("train_step", "train_tokens", "train_time", "train_loss", "val_step", "val_tokens", "val_time",
             "val_loss", "val_bpb")
    return dict(zip(names, [*train, *evals])), {k: s.stride for k, s in streams.items() if s.stride > 1}


def run(req: PlotRequest) -> PlotResult:
    folders.check_file_out(req.out, "--out", req.overwrite, reads=[r / ckpt.METRICS for r in req.runs])
    read = {str(r): _series(r) for r in req.runs}
    series = {name: curves for name, (curves, _) in read.items()}
    thinned = {name: every for name, (_, every) in read.items() if every}
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
    return PlotResult(req.out, series, thinned)
