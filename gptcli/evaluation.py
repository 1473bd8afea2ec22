"""`gptcli eval`, wired: pick the model, tokenize the text into the token cache (streamed,
so a large file never sits in memory), and score it with a sliding window.

The scoring itself is evaluate.py's; this module owns the request and its checks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from gptcli import checkpoint as ckpt
from gptcli.console import Console
from gptcli.data import collect_documents, lookup_cache, tokenize_to_cache
from gptcli.device import pick_device, pick_precision
from gptcli.errors import UsageError
from gptcli.evaluate import score_tokens


@dataclass
class EvalRequest:
    paths: list[str]
    checkpoint: Path | None
    stride: int | None  # None: half the context
    batch_size: int = 8
    device: str = "auto"


def evaluate(req: EvalRequest, console: Console) -> dict:
    run = ckpt.resolve_run(req.checkpoint, console.info)
    device = pick_device(req.device)
    model, tok, _ = ckpt.load_run(run, device)
    block = model.config.block_size
    stride = req.stride if req.stride is not None else max(block // 2, 1)
    if not 1 <= stride <= block:
        raise UsageError(f"--stride must be between 1 and the model's context ({block}), got {stride}")
    docs = collect_documents(req.paths, console.warn)
    tf = lookup_cache(docs, tok)
    if tf is None:
        with console.progress("tokenizing", sum(d.n_bytes for d in docs), "bytes") as bar:
            tf, _ = tokenize_to_cache(docs, tok, progress=lambda done, _: bar.update(done))
    tokens = tf.array()
    if len(tokens) < 2:
        raise UsageError("the text is too short to score: it needs at least one token after <|endoftext|>")
    t0 = time.perf_counter()
    with console.progress("scoring", len(tokens), "tokens") as bar:
        score = score_tokens(model, tokens, tok.token_byte_lengths(), stride=stride, batch_size=req.batch_size,
                             precision=pick_precision("float32", device), progress=lambda done, _: bar.update(done))
    seconds = time.perf_counter() - t0
    console.info(f"scored {score.tokens:,} tokens in {seconds:.1f}s with {run} (context {block}, stride {stride})")
    return {"checkpoint": str(run), **score.as_dict(), "stride": stride, "context": block,
            "seconds": round(seconds, 2), "paths": list(req.paths)}
