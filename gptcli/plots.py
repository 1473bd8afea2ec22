"""Pictures: PNG figures with matplotlib (Agg backend, no display needed) and charts in the
terminal with plotext. Both are imported inside the functions that draw, so importing
this module (and `gptcli --help`) stays light.

Knows nothing of models or runs: callers hand in numbers and labels.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

from gptcli.errors import printable
from gptcli.store import atomic

MAX_LABELS = 40  # tick labels per axis before they are thinned out
MAX_POINTS = 4096  # points a curve keeps: far more than a panel's width in pixels


class Thinned:
    """At most `cap` rows (and the last one) of a stream too long to keep whole, evenly
    spaced: every `stride`-th row, where the stride doubles, and every other kept row is
    dropped, each time the cap is passed. Memory is bounded by the cap, not the stream,
    and no second pass (or knowing the length up front) is needed."""

    def __init__(self, cap: int | None = None):
        self.cap, self.stride, self.seen = cap or MAX_POINTS, 1, 0
        self.kept: list[tuple] = []
        self.last: tuple | None = None

    def add(self, row: tuple) -> None:
        if self.seen % self.stride == 0:
            self.kept.append(row)
            if len(self.kept) > self.cap:
                self.kept = self.kept[::2]  # rows at multiples of 2 * stride stay
                self.stride *= 2
        self.last = row
        self.seen += 1

    def rows(self) -> list[tuple]:
        ends_kept = self.seen == 0 or (self.seen - 1) % self.stride == 0
        return self.kept if ends_kept else [*self.kept, self.last]


@functools.cache
def _font_charmaps() -> list[tuple[str, frozenset[int]]]:
    """(family, code points it draws) for every font matplotlib knows."""
    from matplotlib import font_manager, ft2font

    seen, out = set(), []
    for entry in font_manager.fontManager.ttflist:
        if entry.fname in seen or entry.name.startswith("Last Resort"):  # its glyphs are placeholder boxes
            continue
        seen.add(entry.fname)
        try:
            out.append((entry.name, frozenset(ft2font.FT2Font(entry.fname).get_charmap())))
        except Exception:  # a font file matplotlib lists but cannot open
            continue
    return out


def drawable(labels: list[str]) -> tuple[list[str | None], list[str]]:
    """What a figure can draw of each label, and the font families to draw it with: a
    label with a character no installed font has is None (the caller shows a stand-in),
    and its escaped form goes to `escape`."""
    wanted = {ord(c) for label in labels for c in label}
    fonts = _font_charmaps()
    families = ["DejaVu Sans"]
    missing = {c for c in wanted if c > 127 and not any(c in chars for name, chars in fonts if name in families)}
    for name, chars in fonts:  # add fonts (CJK, say) that cover what the default lacks
        if missing & chars and name not in families:
            families.append(name)
            missing -= chars
    return [None if any(ord(c) in missing for c in label) else label for label in labels], families


def escape(label: str, limit: int = 48) -> str:
    text = "".join(c if c.isascii() else f"\\u{ord(c):04x}" for c in label)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _ticks(n: int) -> list[int]:
    step = max(1, math.ceil(n / MAX_LABELS))
    return list(range(0, n, step))


def heatmaps(path: Path, maps: list[list], titles: list[str], labels: list[str], suptitle: str) -> list[str]:
    """A grid of (T, T) heatmaps, rows x columns as `maps` is nested, token labels on both
    axes (thinned out past MAX_LABELS), saved atomically as PNG. Returns notes about what
    was thinned or escaped, for the caller to show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import PowerNorm

    drawn, families = drawable(labels)
    shown = [label if label is not None else f"#{i}" for i, label in enumerate(drawn)]
    rows, cols = len(maps), len(maps[0])
    T = len(labels)
    cell = min(6.0, max(2.5, 0.13 * T + 1.5))
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 1.2, cell * rows + 0.8), squeeze=False,
                             layout="constrained")
    ticks = _ticks(T)
    image = None
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            image = ax.imshow(maps[r][c], cmap="viridis", norm=PowerNorm(0.5, vmin=0.0, vmax=1.0),
                              interpolation="nearest")
            ax.set_title(printable(titles[r * cols + c]), fontsize=9, family=families)
            ax.set_xticks(ticks, [shown[i] for i in ticks], rotation=90, fontsize=7, family=families)
            ax.set_yticks(ticks, [shown[i] for i in ticks], fontsize=7, family=families)
            if r == rows - 1:
                ax.set_xlabel("key (attended to)", fontsize=8)
            if c == 0:
                ax.set_ylabel("query (attending)", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention weight (square-root scale)")
    notes = []
    if len(ticks) < T:
        notes.append(f"labels on 1 token in {ticks[1] - ticks[0]} of {T}")
    legend = [f"#{i} = {escape(labels[i])}" for i in ticks if drawn[i] is None]
    if legend:
        notes.append("#N: a token with characters no installed font draws (listed below)")
        fig.text(0.01, 0.0, "\n".join("    ".join(legend[j:j + 3]) for j in range(0, len(legend), 3)),
                 fontsize=7, family="DejaVu Sans Mono", va="top")
    fig.suptitle(printable(suptitle) + ("\n" + "; ".join(notes) if notes else ""), fontsize=10)
    _save(fig, path)
    return notes


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


Series = dict[str, tuple[list[float], list[float]]]  # label -> (x, y)


def lines(path: Path, panels: list[tuple[str, str, str, Series]], suptitle: str, columns: int = 2,
          dashed: set[str] = frozenset(), log_x: bool = False) -> None:
    """Line charts, one panel per (title, x label, y label, series), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.0 * columns, 4.2 * rows), squeeze=False, layout="constrained")
    colours = {}
    for ax, (title, xlabel, ylabel, series) in zip([a for row in axes for a in row], panels):
        for label, (x, y) in series.items():
            base = label.split(" (")[0]  # "lstm (val)" and "lstm (train)" share a colour
            colours.setdefault(base, f"C{len(colours)}")
            ax.plot(x, y, label=printable(label), color=colours[base], linestyle="--" if label in dashed else "-",
                    marker="o" if len(x) <= 12 else None, markersize=3)
        ax.set_title(printable(title), fontsize=10)
        if log_x:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in [a for row in axes for a in row][len(panels):]:
        ax.axis("off")
    fig.suptitle(printable(suptitle), fontsize=11)  # run names are paths: their bytes need not be UTF-8
    _save(fig, path)


def terminal(series: Series, title: str, xlabel: str, ylabel: str, width: int = 80, height: int = 20) -> str:
    """A line chart as text for a terminal (plotext), with colour unless NO_COLOR is set."""
    import os

    import plotext as plt

    plt.clear_figure()
    plt.plotsize(width, height)
    if os.environ.get("NO_COLOR"):
        plt.theme("clear")
    for label, (x, y) in series.items():
        if x:
            plt.plot(x, y, label=printable(label), marker="braille")
    plt.title(title)
    plt.xlabel(xlabel)
    plt.ylabel(ylabel)
    return plt.build()
