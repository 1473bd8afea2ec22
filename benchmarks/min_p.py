"""What min-p cuts, measured on held-out text: for every position of the held-out last 10%
of tinyshakespeare, the shipped model's next-token distribution is filtered as `generate`
would filter it (temperature 0.8, then top-p and/or min-p), and the table reports how
often the true next token survives the filter (a sampler can only write what it keeps),
the share of the filtered distribution the true token gets (its mean log2-probability,
floored at 2^-30 when it was cut), and how many tokens a step keeps. The filters are
transformers' own warpers where it is installed, checked against gptcli's on every batch.

    python benchmarks/min_p.py [--windows 64]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from gptcli import workspace
from gptcli.config import SampleConfig
from gptcli.generation.sampling import process_logits
from gptcli.store import checkpoint as ckpt

CORPUS = Path(__file__).resolve().parents[1] / "gptcli" / "assets" / "tinyshakespeare.txt"
SETTINGS = {  # name: (top_p, min_p)
    "top-p 0.95 (the default)": (0.95, None),
    "top-p 0.95 + min-p 0.05": (0.95, 0.05),
    "min-p 0.05 alone": (None, 0.05),
    "min-p 0.1 alone": (None, 0.1),
    "no filter": (None, None),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=64, help="held-out windows of the model's context")
    ap.add_argument("--temperature", type=float, default=0.8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, tok, _ = ckpt.load_run(workspace.SHIPPED, torch.device("cpu"))
    text = CORPUS.read_text(encoding="utf-8")
    ids = torch.tensor(tok.encode(text[int(len(text) * 0.9):]))
    T = model.config.block_size
    starts = torch.linspace(0, len(ids) - T - 2, args.windows).long()
    x = torch.stack([ids[s:s + T] for s in starts])
    y = torch.stack([ids[s + 1:s + T + 1] for s in starts]).reshape(-1)
    with torch.inference_mode():
        logits = model(x)[0].reshape(-1, model.config.vocab_size).float()
    print(f"shipped model, {len(y):,} held-out positions, temperature {args.temperature}")
    print(f"{'filter':28s} {'true token kept':>16s} {'mean log2 p(true)':>18s} {'tokens kept':>12s}")
    for name, (top_p, min_p) in SETTINGS.items():
        cfg = SampleConfig(strategy="sample", temperature=args.temperature, top_p=top_p, min_p=min_p)
        filtered = torch.cat([process_logits(chunk, cfg, None) for chunk in logits.split(1024)])
        kept = torch.isfinite(filtered)
        p_true = filtered.softmax(-1).gather(1, y[:, None])[:, 0]
        log2 = torch.log2(p_true.clamp(min=2.0 ** -30)).mean().item()
        print(f"{name:28s} {kept.gather(1, y[:, None]).float().mean().item():>15.2%} {log2:>18.3f} "
              f"{kept.sum(-1).float().mean().item():>12.1f}")
    print(f"(a vocabulary of {model.config.vocab_size:,}; log2 of 2^-30 = -30 counts each cut true token)")
    _check_against_transformers(logits[:2048], args.temperature)


def _check_against_transformers(logits: torch.Tensor, temperature: float) -> None:
    try:
        from transformers.generation import logits_process as lp
    except ImportError:
        print("transformers is not installed: the filters were not checked against its warpers")
        return
    for top_p, min_p in SETTINGS.values():
        if min_p is None:
            continue
        ours = process_logits(logits, SampleConfig(strategy="sample", temperature=temperature, top_p=top_p,
                                                   min_p=min_p), None)
        theirs = lp.TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_p is not None:
            theirs = lp.TopPLogitsWarper(top_p)(None, theirs)
        theirs = lp.MinPLogitsWarper(min_p)(None, theirs)
        same = torch.equal(torch.isfinite(ours), torch.isfinite(theirs))
        gap = (ours.softmax(-1) - theirs.softmax(-1)).abs().max().item()
        print(f"top_p {top_p}, min_p {min_p}: kept sets equal to transformers' {same}, max probability gap "
              f"{gap:.1e}{'' if math.isfinite(gap) else ' (!)'}")


if __name__ == "__main__":
    main()
