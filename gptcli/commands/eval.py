"""`gptcli eval`: pick the model, tokenize the text through the token cache (streamed, so
a large file never sits in memory), and score it with a sliding window.

The scoring itself is scoring.py's; this module owns the request and its checks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from gptcli.budget import check_scoring
from gptcli.commands import inputs
from gptcli.config import EvalOptions
from gptcli.console import Console
from gptcli.corpus import documents
from gptcli.device import pick_device, pick_precision
from gptcli.errors import UsageError
from gptcli.scoring import score_tokens, window_stride
from gptcli.store import checkpoint as ckpt


@dataclass
class EvalRequest:
    paths: list[str]
    checkpoint: Path | None  # None: the newest run, else the shipped model
    options: EvalOptions  # stride (None: half the context), batch size, device
    text_field: str | None = None  # the records' text field (JSON lines, Parquet); None: "text"


@dataclass
class EvalResult:
    checkpoint: Path
    figures: dict  # tokens, bytes, loss, perplexity, bits_per_byte, accuracy
    stride: int
    context: int
    seconds: float
    paths: list[str]

    def to_json(self) -> dict:
        return {"checkpoint": str(self.checkpoint), **self.figures, "stride": self.stride, "context": self.context,
                "seconds": round(self.seconds, 2), "paths": list(self.paths)}

    def to_text(self) -> str:
        f = self.figures
        return (f"tokens         {f['tokens']:,}\n"
                f"bytes          {f['bytes']:,}\n"
                f"loss           {f['loss']:.4f} nats/token\n"
                f"perplexity     {f['perplexity']:.2f}\n"
                f"bits per byte  {f['bits_per_byte']:.4f}\n"
                f"accuracy       {f['accuracy']:.2%}")


def run(req: EvalRequest, console: Console) -> EvalResult:
    run_dir = ckpt.resolve_run(req.checkpoint, console.info)
    opts = req.options
    device = pick_device(opts.device)
    cfg = ckpt.model_config(ckpt.read_config(run_dir), run_dir)
    stride = window_stride(opts.stride, cfg.block_size)
    check_scoring(cfg, opts.batch_size)
    model, tok, _ = ckpt.load_run(run_dir, device)
    block = model.config.block_size
    with documents(req.paths, console.warn, req.text_field) as docs:
        tokens = inputs.tokens(docs, tok, console, "text").array()
    if len(tokens) < 2:
        raise UsageError("the text is too short to score: it needs at least one token after <|endoftext|>")
    t0 = time.perf_counter()
    with console.progress("scoring", len(tokens), "tokens") as bar:
        score = score_tokens(model, tokens, tok.token_byte_lengths(), stride=stride, batch_size=opts.batch_size,
                             precision=pick_precision("float32", device), progress=lambda done, _: bar.update(done))
    seconds = time.perf_counter() - t0
    console.info(f"scored {score.tokens:,} tokens in {seconds:.1f}s with {run_dir} (context {block}, stride {stride})")
    return EvalResult(run_dir, score.as_dict(), stride, block, seconds, list(req.paths))
