"""Peak memory of tokenizing a large corpus into gptcli's token cache.

Builds a corpus of the requested size from the bundled tinyshakespeare text (each copy
numbered, so the cache cannot shortcut it), then tokenizes it in a fresh subprocess with
the same code `gptcli train` uses, and reports the subprocess's peak RSS next to that of
tokenizing the whole text at once with `tokenizers` (the peer: what a naive pipeline
does). Peak RSS must not grow with the corpus: the target is under 1 GB at 200 MB.

    python benchmarks/tokenize_memory.py --mb 200
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "gptcli" / "assets" / "tinyshakespeare.txt"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from gptcli.tokenizer import BPETokenizer
tok = BPETokenizer.load(sys.argv[2])
t0 = time.perf_counter()
if sys.argv[1] == "gptcli":
    from gptcli.corpus import collect_documents
from gptcli.data import tokenize_to_cache
    docs = collect_documents([sys.argv[3]], print)
    tf, _ = tokenize_to_cache(docs, tok, cache_dir=Path(sys.argv[4]))
    n = tf.n_tokens
else:
    n = len(tok.encode(Path(sys.argv[3]).read_text(encoding="utf-8")))
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"tokens": n, "seconds": time.perf_counter() - t0, "peak_rss_mb": rss_mb}))
"""


def make_corpus(path: Path, mb: int) -> None:
    text = SAMPLE.read_text(encoding="utf-8")
    with open(path, "w", encoding="utf-8") as f:
        i = 0
        while f.tell() < mb * 1_000_000:
            f.write(f"\n\nCOPY {i}\n\n{text}")
            i += 1


def measure(mode: str, tok: Path, corpus: Path, cache: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(tok), str(corpus), str(cache)],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, nargs="+", default=[20, 200], help="corpus sizes in MB")
    ap.add_argument("--peer", action="store_true", help="also measure whole-text encoding (needs RAM)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from gptcli.tokenizer import BPETokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = BPETokenizer.train([SAMPLE.read_text(encoding="utf-8")], 4096).save(tmp / "tok")
        print(f"{'corpus':>8} {'who':>8} {'tokens':>12} {'seconds':>8} {'MB/s':>6} {'peak RSS':>9}")
        for mb in args.mb:
            corpus = tmp / f"corpus{mb}.txt"
            make_corpus(corpus, mb)
            for mode in ["gptcli"] + (["whole"] if args.peer else []):
                r = measure(mode, tok, corpus, tmp / f"cache-{mb}-{time.time()}")
                print(f"{mb:>6}MB {mode:>8} {r['tokens']:>12,} {r['seconds']:>8.1f} {mb / r['seconds']:>6.1f} "
                      f"{r['peak_rss_mb']:>7.0f}MB", flush=True)
            corpus.unlink()


if __name__ == "__main__":
    main()
