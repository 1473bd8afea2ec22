"""Every default location and name gptcli uses, in one place.

A workspace is the folder `gptcli train` runs in: it keeps `./checkpoints/` (one folder
per run) and `./tokenizer/` (the tokenizer runs reuse). Token caches live in the user's
cache folder. The model shipped inside the package is the fallback when there is no run.
Knows nothing of what those folders hold.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

RUNS = Path("checkpoints")  # training runs, one folder each
TOKENIZER = Path("tokenizer")  # the workspace tokenizer, trained there on first use
TOKENIZER_FILE = "tokenizer.json"
SHIPPED = Path(__file__).resolve().parent / "assets" / "default"  # package data: works from any install
SAMPLE_CORPUS = Path(__file__).resolve().parent / "assets" / "tinyshakespeare.txt"
RUN_FORMAT = "gptcli-run"  # the "format" of a run folder's config.json
DEFAULT_VOCAB = 4096  # tokens in a newly trained tokenizer (docs/benchmarks.md, "Why this vocabulary")


def cache_root() -> Path:
    """$GPTCLI_CACHE_DIR, else $XDG_CACHE_HOME/gptcli, else ~/.cache/gptcli. One that is
    (or lies under) a file is the user's setting at fault, not a failed write: refused."""
    if os.environ.get("GPTCLI_CACHE_DIR"):
        root, named = Path(os.environ["GPTCLI_CACHE_DIR"]), "GPTCLI_CACHE_DIR"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        root, named = Path(base) / "gptcli", "the cache folder"
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        from gptcli.errors import UsageError

        where = "is a file" if existing == root else f"lies under {existing}, a file"
        raise UsageError(f"{named} {root} {where}: point it at a folder")
    return root


def token_cache() -> Path:
    return cache_root() / "tokens"


def stdin_spool() -> Path:
    return cache_root() / "stdin"


def default_run_folder(paths: list[str], prefix: str = "") -> Path:
    """checkpoints/<prefix><name of the first corpus path>-<time>."""
    first = paths[0] if paths else "run"
    stem = "stdin" if first == "-" else (Path(first).stem or Path(first).resolve().name or "run")
    return RUNS / f"{prefix}{stem}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
