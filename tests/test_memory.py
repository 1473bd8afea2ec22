"""Tokenizing into the cache streams: peak memory does not grow with the corpus.
(benchmarks/tokenize_memory.py runs the 200 MB version.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO, SHAKESPEARE

CHILD = r"""
import json, resource, sys
from pathlib import Path
from gptcli.corpus import collect_documents
from gptcli.data import tokenize_to_cache
from gptcli.tokenizer import BPETokenizer
tok = BPETokenizer.load(sys.argv[1])
tf, _ = tokenize_to_cache(collect_documents([sys.argv[2]], print), tok, cache_dir=Path(sys.argv[3]))
# this process's own peak: VmHWM starts afresh at exec, while ru_maxrss keeps the forking
# parent's peak (Linux carries it across execve), so a big pytest process would count
status = Path("/proc/self/status")
hwm = [int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:")] \
    if status.exists() else [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]
print(json.dumps({"tokens": tf.n_tokens, "rss_mb": hwm[0] / 1024}))
"""


def _peak(tmp_path, tok_path, mb):
    text = SHAKESPEARE.read_text(encoding="utf-8")
    corpus = tmp_path / f"c{mb}.txt"
    with open(corpus, "w", encoding="utf-8") as f:
        i = 0
        while f.tell() < mb * 1_000_000:
            f.write(f"COPY {i}\n{text}")
            i += 1
    out = subprocess.run([sys.executable, "-c", CHILD, str(tok_path), str(corpus), str(tmp_path / f"cache{mb}")],
                         capture_output=True, text=True, check=True, cwd=REPO, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_corpus_size(tmp_path, mixed_tokenizer):
    tok_path = mixed_tokenizer.save(tmp_path / "tok")
    small, big = _peak(tmp_path, tok_path, 5), _peak(tmp_path, tok_path, 20)
    assert big["tokens"] > 3.5 * small["tokens"]
    assert big["rss_mb"] < 1024
    assert big["rss_mb"] - small["rss_mb"] < 64, (small, big)
