"""`gptcli attention`: what each head attends to for a prompt, as a terminal view (for
each token, the tokens it attends to most), PNG heatmaps, or JSON.

The maps come from attention.py; this module picks the model, checks the layer and head
against it, and renders. Tokens are shown as text with whitespace made visible; a token
that is part of a multi-byte character shows its bytes.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch

from gptcli.architectures import of as architecture
from gptcli.attention import attention_maps
from gptcli.config import AttentionOptions
from gptcli.console import Console
from gptcli.device import pick_device
from gptcli.errors import UsageError
from gptcli.store import checkpoint as ckpt
from gptcli.store import folders

VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible(text: str) -> str:
    """Whitespace and control characters made visible."""
    return "".join(VISIBLE.get(c, c if c.isprintable() else f"\\x{ord(c):02x}") for c in text)


@dataclass
class AttentionRequest:
    checkpoint: Path | None  # None: the newest run, else the shipped model
    prompt: str
    options: AttentionOptions
    out: Path | None = None  # a PNG of heatmaps
    overwrite: bool = False  # replace an existing --out file


@dataclass
class AttentionResult:
    tokens: list[str]  # each token's text (bytes of a split character as \\xNN)
    token_ids: list[int]
    maps: torch.Tensor  # (layers, heads, T, T): the layers and heads asked for
    layers: list[int]
    heads: list[int]
    top: int
    view_layer: int  # the terminal view's layer
    head: int | None  # the terminal view's head; None: the mean over heads
    notes: list[str]  # what the PNG thinned out or escaped

    def to_json(self) -> dict:
        return {"tokens": self.tokens, "token_ids": self.token_ids, "layers": self.layers, "heads": self.heads,
                "attention": [[[[round(float(w), 6) for w in row] for row in head] for head in layer]
                              for layer in self.maps.tolist()]}

    def rows(self) -> list[tuple[int, str, list[tuple[str, float]]]]:
        """For each query: its position, its token, and the `top` keys it weighs most."""
        li = self.layers.index(self.view_layer)
        grid = self.maps[li].mean(dim=0) if self.head is None else self.maps[li, self.heads.index(self.head)]
        out = []
        for q in range(len(self.tokens)):
            weights = grid[q, :q + 1]
            best = weights.topk(min(self.top, q + 1))
            out.append((q, visible(self.tokens[q]), [(visible(self.tokens[k]), float(w))
                                                     for w, k in zip(best.values.tolist(), best.indices.tolist())]))
        return out

    def title(self) -> str:
        which = f"head {self.head}" if self.head is not None else "mean over heads (--head H shows one)"
        return f"layer {self.view_layer}, {which}: for each token, the {self.top} it attends to most"

    def to_text(self) -> str:
        lines = [self.title()]
        width = max(_columns(visible(t)) for t in self.tokens)
        for q, token, best in self.rows():
            pad = " " * (width - _columns(token))
            lines.append(f"{q:>4}  {token}{pad}  " + "  ".join(f"{k} {w:.2f}" for k, w in best))
        return "\n".join(lines)

    def to_rich(self):
        """The same view as a rich table, for a terminal."""
        from rich.table import Table

        table = Table(title=self.title(), show_lines=False)
        table.add_column("#", justify="right")
        table.add_column("token")
        for i in range(self.top):
            table.add_column(f"{i + 1}.", justify="left")
        for q, token, best in self.rows():
            table.add_row(str(q), token, *[f"{k} {w:.2f}" for k, w in best])
        return table


def _columns(text: str) -> int:
    """Terminal columns: wide (CJK) characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _token_text(tok, i: int) -> str:
    return tok.token_bytes[i].decode("utf-8", "backslashreplace")


def run(req: AttentionRequest, console: Console) -> AttentionResult:
    opts = req.options
    run_dir = ckpt.resolve_run(req.checkpoint, console.info)
    if req.out is not None:
        folders.check_file_out(req.out, "--out", req.overwrite, reads=[run_dir])
    cfg = ckpt.model_config(ckpt.read_config(run_dir), run_dir)
    if not architecture(cfg).attention_maps:
        raise UsageError(f"attention maps need a GPT: {run_dir} is an {cfg.arch} model, which has no attention")
    if opts.layer is not None and opts.layer >= cfg.n_layer:
        raise UsageError(f"--layer must be between 0 and {cfg.n_layer - 1} (the model has {cfg.n_layer} layers), "
                         f"got {opts.layer}")
    if opts.head is not None and opts.head >= cfg.n_head:
        raise UsageError(f"--head must be between 0 and {cfg.n_head - 1} (the model has {cfg.n_head} heads), "
                         f"got {opts.head}")
    if req.prompt == "":
        raise UsageError("the prompt is empty: attention maps need at least one token")
    model, tok, _ = ckpt.load_run(run_dir, pick_device(opts.device))
    ids = tok.encode_tail(req.prompt, cfg.block_size + 1)
    if len(ids) > cfg.block_size:
        console.warn(f"the prompt is longer than the model's context: keeping its last {cfg.block_size} tokens")
        ids = ids[-cfg.block_size:]
    maps = attention_maps(model, torch.tensor(ids, device=model.wte.weight.device)).float().cpu()
    layers = [opts.layer] if opts.layer is not None else list(range(cfg.n_layer))
    heads = [opts.head] if opts.head is not None else list(range(cfg.n_head))
    maps = maps[layers][:, heads]
    result = AttentionResult([_token_text(tok, i) for i in ids], ids, maps, layers, heads, opts.top,
                             opts.layer if opts.layer is not None else cfg.n_layer - 1, opts.head, [])
    if req.out is not None:
        result.notes = _draw(result, req.out, run_dir)
        console.info(f"wrote {req.out}" + "".join(f" ({n})" for n in result.notes))
    return result


def _draw(result: AttentionResult, out: Path, run_dir: Path) -> list[str]:
    from gptcli import plots

    grid = [[result.maps[li, hi].numpy() for hi in range(len(result.heads))] for li in range(len(result.layers))]
    titles = [f"layer {layer}, head {head}" for layer in result.layers for head in result.heads]
    labels = [visible(t) for t in result.tokens]
    return plots.heatmaps(out, grid, titles, labels, f"attention weights of {run_dir.name}: row = query token, "
                          "column = the token it attends to")
