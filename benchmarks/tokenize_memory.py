"""Peak memory of reading and tokenizing a large corpus into gptcli's token cache.

Builds a corpus of the requested size from the bundled tinyshakespeare text (each copy
numbered, so the cache cannot shortcut it), in each requested form: plain text, JSON
lines (one paragraph per record), gzip'd JSON lines, or Parquet (row groups of 10,000
records; needs pyarrow). Then it reads (the whole-file check) and tokenizes it in a fresh
subprocess with the code `gptcli train` uses, and reports the subprocess's peak RSS, next
to that of tokenizing the whole text at once with `tokenizers` (--peer: what a naive
pipeline does). Peak RSS must not grow with the corpus: the target is under 1 GB at 1 GB,
in every form.

    python benchmarks/tokenize_memory.py --mb 200 1000 --form text jsonl jsonl.gz parquet
"""

from __future__ import annotations

import argparse
import gzip
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


def copies(mb: int):
    """Numbered copies of the sample, about `mb` MB of text in all."""
    text = SAMPLE.read_text(encoding="utf-8")
    for i in range(mb * 1_000_000 // len(text.encode()) + 1):
        yield f"\n\nCOPY {i}\n\n{text}"


def make_corpus(path: Path, mb: int, form: str) -> None:
    if form == "text":
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(copies(mb))
        return
    records = ({"text": p} for copy in copies(mb) for p in copy.split("\n\n") if p)
    if form == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        with pq.ParquetWriter(path, pa.schema([("text", pa.string())])) as writer:
            batch = []
            for r in records:
                batch.append(r["text"])
                if len(batch) == 10_000:
                    writer.write_table(pa.table({"text": batch}))
                    batch = []
            writer.write_table(pa.table({"text": batch}))
        return
    opener = gzip.open if form == "jsonl.gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def measure(mode: str, tok: Path, corpus: Path, cache: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(tok), str(corpus), str(cache)],
                         capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, nargs="+", default=[20, 200], help="corpus sizes in MB")
    ap.add_argument("--form", nargs="+", default=["text"], choices=["text", "jsonl", "jsonl.gz", "parquet"],
                    help="corpus forms to build and read")
    ap.add_argument("--peer", action="store_true", help="also measure whole-text encoding (plain text; needs RAM)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from gptcli.tokenizer import BPETokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok = BPETokenizer.train([SAMPLE.read_text(encoding="utf-8")], 4096).save(tmp / "tok")
        print(f"{'corpus':>8} {'form':>8} {'file':>8} {'who':>8} {'tokens':>12} {'seconds':>8} {'MB/s':>6} "
              f"{'peak RSS':>9}")
        for mb in args.mb:
            for form in args.form:
                corpus = tmp / f"corpus{mb}.{'txt' if form == 'text' else form}"
                make_corpus(corpus, mb, form)
                size = corpus.stat().st_size / 1e6
                for mode in ["gptcli"] + (["whole"] if args.peer and form == "text" else []):
                    r = measure(mode, tok, corpus, tmp / f"cache-{mb}-{time.time()}")
                    print(f"{mb:>6}MB {form:>8} {size:>6.0f}MB {mode:>8} {r['tokens']:>12,} {r['seconds']:>8.1f} "
                          f"{mb / r['seconds']:>6.1f} {r['peak_rss_mb']:>7.0f}MB", flush=True)
                corpus.unlink()


if __name__ == "__main__":
    main()
