"""The hostile cases, by class. Each starts from the prepared workspace (harness.prepare:
corpus.txt, val.txt, a trained tiny `run` and its copy `keep`, ./tokenizer/, an HF export
`hf`, the user's `notes/`), breaks something, runs one gptcli command, and checks what
the files look like afterwards. QUICK runs in every test run; the rest are marked slow."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
from pathlib import Path

from harness import TINY, Case, Result

BASE: Path = Path()  # the prepared workspace; set by the test module
TRAIN = ["train", "corpus.txt", *TINY, "--max-steps", "2", "--eval-interval", "2"]


# -- checks: the state of the files afterwards ----------------------------------------


def _tree(root: Path) -> dict[str, str]:
    if root.is_file():
        return {"": hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


def unchanged(*names: str):
    """These paths hold exactly what the prepared workspace held."""
    def check(ws: Path, r: Result) -> None:
        for name in names:
            assert _tree(ws / name) == _tree(BASE / name), f"{name} changed"
    return check


def nothing_new(*allowed: str):
    """No new file or folder at the top of the workspace (cache and named ones aside)."""
    def check(ws: Path, r: Result) -> None:
        new = {p.name for p in ws.iterdir()} - {p.name for p in BASE.iterdir()} - {".cache", *allowed}
        assert not new, f"left behind: {sorted(new)}"
        unchanged("run", "keep", "tokenizer", "notes")(ws, r)
    return check


def both(*checks):
    def check(ws: Path, r: Result) -> None:
        for c in checks:
            c(ws, r)
    return check


def _hold_lock(lock: Path) -> None:
    """Another process holds the lock (as a training gptcli would) for the next 20 seconds."""
    import subprocess
    import sys

    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_CREAT | os.O_RDWR); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('locked', flush=True); "
            "time.sleep(20)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"


def _expect(condition: bool, message: str) -> None:
    assert condition, message


def out_has(text: str):
    def check(ws: Path, r: Result) -> None:
        assert text in r.stdout, r.stdout[:300]
    return check


# -- setups: making the workspace hostile ----------------------------------------------


def edit_json(rel: str, change) -> callable:
    def setup(ws: Path) -> None:
        doc = json.loads((ws / rel).read_text())
        change(doc)
        (ws / rel).write_text(json.dumps(doc))
    return setup


def write(rel: str, data: bytes | str):
    def setup(ws: Path) -> None:
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_bytes(data.encode() if isinstance(data, str) else data)
    return setup


def deep(n: int) -> str:
    return "[" * n + "]" * n


def safetensors_with(header: dict | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def fifo_in(folder: str):
    def setup(ws: Path) -> None:
        os.mkfifo(ws / folder / "pipe")
        (ws / folder / "more.txt").write_text("real text " * 2000)
    return setup


def socket_in(folder: str):
    def setup(ws: Path) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(ws / folder / "sock"))  # the file stays after the socket closes
        s.close()
        (ws / folder / "more.txt").write_text("real text " * 2000)
    return setup


def dangling_in(folder: str):
    def setup(ws: Path) -> None:
        (ws / folder / "gone").symlink_to(ws / "nowhere.txt")
        (ws / folder / "more.txt").write_text("real text " * 2000)
    return setup


# -- the classes --------------------------------------------------------------------------

DATA_LOSS = [
    Case("overwrite-bad-seed-keeps-old", "data-loss", [*TRAIN, "--out", "keep", "--overwrite", "--seed", "-1"],
         match="--seed", check=nothing_new()),
    Case("overwrite-huge-width-keeps-old", "data-loss", [*TRAIN, "--out", "keep", "--overwrite", "--n-embd",
                                                         "100000000"], match="--n-embd", check=nothing_new()),
    Case("overwrite-too-big-model-keeps-old", "data-loss", [*TRAIN, "--out", "keep", "--overwrite", "--n-embd",
                                                            "60000", "--n-head", "1"], match="memory",
         check=nothing_new()),
    Case("overwrite-missing-corpus-keeps-old", "data-loss", ["train", "nope.txt", "--out", "keep", "--overwrite"],
         match="no such file", check=nothing_new()),
    Case("overwrite-tiny-corpus-keeps-old", "data-loss", ["train", "tiny.txt", *TINY, "--out", "keep", "--overwrite"],
         setup=write("tiny.txt", "just a few words"), match="fewer than one block",
         check=nothing_new("tiny.txt")),
    Case("overwrite-users-folder-refused", "data-loss", [*TRAIN, "--out", "notes", "--overwrite"],
         match="not a gptcli run folder", check=nothing_new()),
    Case("overwrite-a-file-refused", "data-loss", [*TRAIN, "--out", "corpus.txt", "--overwrite"],
         match="not a folder", check=unchanged("corpus.txt")),
    Case("out-not-empty-refused", "data-loss", [*TRAIN, "--out", "keep"], match="not empty", check=nothing_new()),
    Case("import-over-users-folder-refused", "data-loss", ["import-hf", "hf", "notes", "--overwrite"],
         match="not a gptcli run folder", check=nothing_new()),
    Case("export-over-users-folder-refused", "data-loss", ["export-hf", "run", "notes", "--overwrite"],
         match="not a Hugging Face model folder", check=nothing_new()),
    Case("export-over-a-run-folder-refused", "data-loss", ["export-hf", "run", "keep", "--overwrite"],
         match="not a Hugging Face model folder", check=nothing_new()),
    Case("import-over-a-run-being-trained-refused", "data-loss", ["import-hf", "hf", "keep", "--overwrite"],
         setup=lambda ws: _hold_lock(ws / "keep/.lock"), match="is writing to it", check=unchanged("keep")),
    Case("resume-of-a-run-being-trained-refused", "data-loss", ["train", "--resume", "keep", "--max-steps", "9"],
         setup=lambda ws: _hold_lock(ws / "keep/.lock"), match="being written by another gptcli process",
         check=unchanged("keep")),
    Case("import-keeps-a-users-dot-old-folder", "data-loss", ["import-hf", "hf", "keep", "--overwrite"], code=0,
         setup=write("keep.old/mine.txt", "mine"),
         check=lambda ws, r: _expect((ws / "keep.old/mine.txt").read_text() == "mine", "keep.old was touched")),
    Case("resume-with-a-damaged-metrics-line", "data-loss", ["train", "--resume", "run", "--max-steps", "4"],
         setup=lambda ws: (ws / "run/metrics.jsonl").write_text(
             (BASE / "run/metrics.jsonl").read_text().replace("\n", "\nnot json\n", 1)),
         match="metrics.jsonl line 2", check=unchanged("keep", "tokenizer")),
    Case("resume-with-a-cut-last-metrics-line", "data-loss", ["train", "--resume", "run", "--max-steps", "4"],
         code=0, setup=lambda ws: (ws / "run/metrics.jsonl").write_text(
             (BASE / "run/metrics.jsonl").read_text() + '{"type": "train", "st')),
    Case("tokenizer-train-over-existing-refused", "data-loss", ["tokenizer", "train", "corpus.txt", "--out",
                                                                "tokenizer"], match="exists", check=nothing_new()),
]

CORRUPT_STATE = [
    Case("cache-overwritten-in-place-is-rebuilt", "corrupt-state", [*TRAIN, "--out", "new"], code=0,
         setup=lambda ws: [p.write_bytes(bytes(p.stat().st_size)) for p in (ws / ".cache/tokens").glob("*.bin")],
         match="damaged"),
    Case("cache-meta-garbage-is-rebuilt", "corrupt-state", [*TRAIN, "--out", "new"], code=0,
         setup=lambda ws: [p.write_text("{oops") for p in (ws / ".cache/tokens").glob("*.json")], match="damaged"),
    Case("cache-truncated-is-rebuilt", "corrupt-state", [*TRAIN, "--out", "new"], code=0,
         setup=lambda ws: [p.write_bytes(p.read_bytes()[:10]) for p in (ws / ".cache/tokens").glob("*.bin")],
         match="damaged"),
    Case("cache-stale-temp-is-removed", "corrupt-state", ["eval", "val.txt", "-c", "run"], code=0,
         stdout="file", setup=write(".cache/tokens/.x.bin.999999999.abcdefgh.tmp", "left by a killed writer"),
         check=lambda ws, r: _expect(not list((ws / ".cache/tokens").glob(".*.tmp")), "a stale temp file was kept")),
    Case("a-killed-runs-stdin-spool-is-removed", "corrupt-state", ["train", "-", *TINY, "--max-steps", "1", "--out",
                                                                  "p"], code=0,
         stdin=("To be, or not to be, that is the question. " * 800).encode(),
         setup=write(".cache/stdin/.stdin.999999999.abcdefgh.tmp", "left by a killed run"),
         check=lambda ws, r: _expect(not list((ws / ".cache/stdin").glob("*")), "a spool was left behind")),
    Case("failed-first-run-leaves-no-tokenizer", "corrupt-state", ["train", "tiny.txt", *TINY, "--out", "t"],
         setup=lambda ws: ((ws / "tiny.txt").write_text("a few words"),
                           __import__("shutil").rmtree(ws / "tokenizer")),
         match="fewer than one block",
         check=lambda ws, r: _expect(not (ws / "tokenizer").exists() and not (ws / "t").exists(), "left files")),
    Case("train-in-a-folder-twice-skips-gptcli-files", "corrupt-state",
         ["train", ".", *TINY, "--max-steps", "2", "--eval-interval", "2", "--out", "again"], code=0,
         match="skipping .*a folder of gptcli's",
         check=lambda ws, r: _no_gptcli_files(ws / "again/config.json")),
    Case("resume-after-corpus-edit-refused", "corrupt-state", ["train", "--resume", "run", "--max-steps", "4"],
         setup=lambda ws: (ws / "corpus.txt").write_text((BASE / "corpus.txt").read_text() + "more"),
         match="differs", check=unchanged("run")),
    Case("resume-with-another-corpus-refused", "corrupt-state", ["train", "val.txt", "--resume", "run",
                                                                 "--max-steps", "4"], match="differs",
         check=unchanged("run")),
    Case("resume-after-corpus-edit-allowed-by-flag", "corrupt-state",
         ["train", "--resume", "run", "--max-steps", "4", "--allow-corpus-change"], code=0,
         setup=lambda ws: (ws / "corpus.txt").write_text((BASE / "corpus.txt").read_text() + "more")),
    Case("prompts-split-on-newlines-only", "corrupt-state", ["generate", "-c", "run", "--prompts", "p.txt", "-n", "3",
                                                             "--greedy"], code=0,
         setup=write("p.txt", "one\u2028still one\ntwo\x0cstill two\r\nthree\n"),
         check=lambda ws, r: _expect(len(r.stdout.split("\n")) == 4, r.stdout)),
    Case("a-run-without-weights-is-not-the-newest", "corrupt-state", ["generate", "-p", "hi", "-n", "2"], code=0,
         setup=lambda ws: ((ws / "checkpoints").mkdir(),
                           __import__("shutil").copytree(ws / "run", ws / "checkpoints/dead"),
                           (ws / "checkpoints/dead/model.safetensors").unlink()),
         match="shipped with gptcli"),
]


def _no_gptcli_files(config: Path) -> None:
    corpus = json.loads(config.read_text())["training"]["corpus"]
    bad = [c for c in corpus if c.endswith(("tokenizer.json", "config.json", "metrics.jsonl"))]
    assert not bad, bad


HANG_MEMORY = [
    Case("fifo-in-a-corpus-folder-is-skipped", "hang", ["train", "notes", *TINY, "--max-steps", "1", "--out", "f",
                                                        "--vocab-size", "300"],
         code=0, setup=fifo_in("notes"), match="not a regular file", timeout=60),
    Case("socket-in-a-corpus-folder-is-skipped", "hang", ["train", "notes", *TINY, "--max-steps", "1", "--out", "s"],
         code=0, setup=socket_in("notes"), match="not a regular file"),
    Case("dangling-link-in-a-corpus-folder-is-skipped", "hang", ["train", "notes", *TINY, "--max-steps", "1",
                                                                 "--out", "d"],
         code=0, setup=dangling_in("notes"), match="a link to nothing"),
    Case("train-from-dev-zero-stops-at-once", "hang", ["train", "-", "--out", "z"], stdin="/dev/zero",
         match="binary data", max_seconds=20, check=lambda ws, r: _small_cache(ws)),
    Case("train-from-dev-urandom-stops-at-once", "hang", ["train", "-", "--out", "z"], stdin="/dev/urandom",
         match="stdin is", max_seconds=20, check=lambda ws, r: _small_cache(ws)),
    Case("train-on-named-dev-zero-stops-at-once", "hang", ["train", "/dev/zero", "--out", "z"], match="binary data",
         max_seconds=20),
    Case("generate-from-dev-zero-stops-at-once", "hang", ["generate", "-c", "run", "-n", "2"], stdin="/dev/zero",
         match="binary data", max_seconds=20),
    Case("encode-from-dev-zero-stops-at-once", "hang", ["tokenizer", "encode"], stdin="/dev/zero",
         match="binary data", max_seconds=20),
    Case("config-with-100000-layers-refused-before-building", "memory", ["generate", "-c", "run", "-p", "x"],
         setup=edit_json("run/config.json", lambda d: d["model"].update(n_layer=1000, n_embd=16384, n_head=1)),
         match="memory", max_seconds=20, memory_mb=2048),
    Case("hf-config-with-huge-model-refused", "memory", ["import-hf", "hf", "big"],
         setup=edit_json("hf/config.json", lambda d: d.update(n_layer=1000, n_embd=16384, n_head=1)),
         match="memory", max_seconds=20, memory_mb=2048),
    Case("beams-10000-refused", "memory", ["generate", "-c", "run", "-p", "x", "--beams", "10000"], match="--beams"),
    Case("num-samples-a-billion-refused", "memory", ["generate", "-c", "run", "-p", "x", "--num-samples",
                                                     "1000000000"], match="--num-samples"),
    Case("long-beam-search-refused-by-memory", "memory", ["generate", "-c", "run", "-p", "x", "--beams", "1024",
                                                          "-n", "10000000"], match="memory", memory_mb=2048),
    Case("training-batch-too-big-refused", "memory", [*TRAIN, "--batch-size", "60000", "--block-size", "100000",
                                                      "--out", "b"], match="memory", check=nothing_new()),
    Case("eval-batch-too-big-refused", "memory", ["eval", "val.txt", "-c", "run", "--batch-size", "65536"],
         setup=edit_json("run/config.json", lambda d: None), match="memory", memory_mb=1024),
    Case("a-20-mb-prompt-in-bounded-memory", "memory", ["generate", "-c", "run", "-n", "1", "--greedy"], code=0,
         stdin=("word " * 4_000_000).encode(), memory_mb=2048, max_seconds=60),
]


def _small_cache(ws: Path) -> None:
    size = sum(p.stat().st_size for p in (ws / ".cache").rglob("*") if p.is_file())
    base = sum(p.stat().st_size for p in (BASE / ".cache").rglob("*") if p.is_file())
    assert size <= base + (2 << 20), f"the cache grew by {size - base} bytes"
    assert not list((ws / ".cache").glob("stdin/*")), "a spool was left behind"


# -- streams: closed, full, a reader that leaves, an ASCII locale, signals --------------

PRODUCERS = {  # commands whose product goes to stdout, with their stdin
    "generate": (["generate", "-c", "run", "-p", "hi", "-n", "20", "--greedy"], b""),
    "eval": (["eval", "val.txt", "-c", "run"], b""),
    "info": (["info", "run"], b""),
    "info-json": (["info", "run", "--json"], b""),
    "encode": (["tokenizer", "encode"], "héllo wörld 日本 ".encode() * 50),
    "decode": (["tokenizer", "decode"], b"65 269 199 " * 50),
    "train-json": ([*TRAIN, "--out", "j", "--json"], b""),
    "import-json": (["import-hf", "hf", "imp", "--json"], b""),
    "export-json": (["export-hf", "run", "exp", "--json"], b""),
}


def _stream_cases() -> list[Case]:
    cases = []
    for name, (args, stdin) in PRODUCERS.items():
        cases += [
            Case(f"{name}-stdout-closed", "streams", args, stdin=stdin, stdout=None, match="stdout is closed",
                 check=nothing_new()),
            Case(f"{name}-stderr-closed", "streams", args, code=0, stdin=stdin, stderr=None),
            Case(f"{name}-stdout-full", "streams", args, code=1, stdin=stdin, stdout="full",
                 match="cannot write to stdout: No space left on device"),
            Case(f"{name}-reader-leaves", "streams", args, code=0, stdin=stdin, stdout=("head", 5)),
            Case(f"{name}-ascii-locale", "streams", args, code=0, stdin=stdin, encoding="ascii",
                 env={"LANG": "C", "LC_ALL": "C"}),
        ]
    return cases


BIG_TEXT = ("To be, or not to be, that is the question. " * 60000)

SIGNALS = [
    Case("ctrl-c-in-generate", "streams", ["generate", "-c", "run", "-p", "hi", "--num-samples", "100000"],
         code=130, signal="SIGINT", signal_after=3, match="(?m)^interrupted$"),
    Case("ctrl-c-in-eval", "streams", ["eval", "big.txt", "-c", "run", "--stride", "1"], code=130,
         setup=write("big.txt", BIG_TEXT), signal="SIGINT", signal_after=4, match="interrupted"),
    Case("ctrl-c-in-train-saves-a-checkpoint", "streams", [*TRAIN[:-4], "--max-steps", "1000000", "--out", "c"],
         code=130, signal="SIGINT", signal_after=5, match="checkpoint saved",
         check=lambda ws, r: _present(ws / "c/resume/trainer_state.json")),
    Case("sigterm-in-train-saves-a-checkpoint", "streams", [*TRAIN[:-4], "--max-steps", "1000000", "--out", "c"],
         code=143, signal="SIGTERM", signal_after=5, match="continue with",
         check=lambda ws, r: _present(ws / "c/resume/trainer_state.json")),
    Case("ctrl-c-in-tokenizing", "streams", ["train", "big.txt", *TINY, "--out", "c", "--vocab-size", "4000"],
         # 31 MB: about 1 s of start-up, 3 s of tokenizer training, then 3 s of tokenizing on the EPYC
         code=130,
         setup=lambda ws: (write("big.txt", BIG_TEXT * 12)(ws), __import__("shutil").rmtree(ws / "tokenizer")),
         signal="SIGINT", signal_after=4.5, match="interrupted",
         check=lambda ws, r: _expect(not (ws / "tokenizer").exists() and not (ws / "c").exists(), "left files")),
]


def _present(path: Path) -> None:
    assert path.exists(), f"{path} is missing"


# -- bad input: one line, exit 2, nothing left behind -----------------------------------

TRAIN_FLAGS = [
    (["--seed", "-1"], "--seed"), (["--seed", "1e3"], "--seed"), (["--vocab-size", "1e30"], "--vocab-size"),
    (["--vocab-size", "100"], "at least 257"), (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"),
    (["--lr", "-1"], "--lr"), (["--lr", "1e9"], "--lr"), (["--dropout", "-0.1"], "--dropout"),
    (["--dropout", "1"], "--dropout"), (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "99999999"], "--batch-size"), (["--max-time", "0"], "--max-time"),
    (["--max-time", "1e9h"], "--max-time"), (["--max-time", "soon"], "--max-time"),
    (["--n-layer", "0"], "--n-layer"), (["--n-head", "0"], "--n-head"), (["--block-size", "200000"], "--block-size"),
    (["--grad-accum", "0"], "--grad-accum"), (["--eval-iters", "0"], "--eval-iters"),
    (["--warmup-steps", "-1"], "--warmup-steps"), (["--epochs", "0"], "--epochs"), (["--epochs", "nan"], "--epochs"),
    (["--patience", "0"], "--patience"), (["--log-interval", "0"], "--log-interval"),
    (["--weight-decay", "-1"], "--weight-decay"), (["--grad-clip", "nan"], "--grad-clip"),
    (["--min-lr", "1", "--lr", "0.001"], "--min-lr"), (["--val-fraction", "0"], "--val-fraction"),
    (["--val-fraction", "1.5"], "--val-fraction"), (["--max-steps", "-5"], "--max-steps"),
    (["--eval-interval", "0"], "--eval-interval"), (["--pos-encoding", "{x}"], "--pos-encoding"),
    (["--device", "{}"], "--device"), (["--dtype", "float8"], "--dtype"), (["--preset", "huge"], "unknown preset"),
    (["--n-embd", "30", "--n-head", "4"], "not divisible"), (["--init", "nowhere"], "no such run folder"),
    (["--tokenizer", "nowhere"], "no tokenizer"), (["--allow-corpus-change"], "only applies with --resume"),
]

GENERATE_FLAGS = [
    (["-n", "1e12"], "max-new-tokens"), (["-n", "100000000"], "--max-new-tokens"), (["-n", "-1"], "--max-new-tokens"),
    (["--temperature", "nan"], "--temperature"), (["--temperature", "inf"], "--temperature"),
    (["--top-p", "2"], "--top-p"), (["--top-k", "-1"], "--top-k"), (["--repetition-penalty", "1e-308"],
                                                                     "--repetition-penalty"),
    (["--num-return", "0", "--beams", "2"], "--num-return"), (["--length-penalty", "nan", "--beams", "2"],
                                                               "--length-penalty"),
    (["--stop", ""], "--stop"), (["--prompt", "bad \udcff byte"], "not valid UTF-8"),
    (["--prompts", "missing.txt", "-p", ""], "exclusive"), (["--batch-size", "0"], "--batch-size"),
    (["--device", "tpu"], "--device"), (["--beams", "4", "--top-k", "5"], "drop --top-k"),
    (["--greedy", "--temperature", "0.5"], "--temperature"), (["--early-stopping"], "beam search"),
    (["-c", "nowhere"], "no such run folder"), (["-c", "notes"], "not a gptcli run folder"),
    (["-c", "corpus.txt"], "not a folder"),
]

EVAL_FLAGS = [
    (["--stride", "0"], "--stride"), (["--stride", "100000"], "--stride"), (["--batch-size", "0"], "--batch-size"),
    (["--device", "tpu"], "--device"),
]


def _flag_cases() -> list[Case]:
    cases = [Case(f"train {' '.join(f)}", "bad-input", [*TRAIN, *f, "--out", "new"], match=m, check=nothing_new())
             for f, m in TRAIN_FLAGS]
    cases += [Case(f"generate {' '.join(f)}", "bad-input", ["generate", "-c", "run", "-p", "x", *f], match=m)
              for f, m in GENERATE_FLAGS]
    cases += [Case(f"eval {' '.join(f)}", "bad-input", ["eval", "val.txt", "-c", "run", *f], match=m)
              for f, m in EVAL_FLAGS]
    return cases


CONFIG_EDITS = {  # config.json of a run, edited
    "n_layer-2.5": lambda d: d["model"].update(n_layer=2.5),
    "n_layer-string": lambda d: d["model"].update(n_layer="1"),
    "n_layer-bool": lambda d: d["model"].update(n_layer=True),
    "n_layer-null": lambda d: d["model"].update(n_layer=None),
    "n_layer-negative": lambda d: d["model"].update(n_layer=-1),
    "n_layer-1e300": lambda d: d["model"].update(n_layer=1e300),
    "vocab-10": lambda d: d["model"].update(vocab_size=10),
    "pos-encoding-number": lambda d: d["model"].update(pos_encoding=5),
    "unknown-field": lambda d: d["model"].update(depth=3),
    "model-a-list": lambda d: d.update(model=[1, 2]),
    "format-version-text": lambda d: d.update(format_version="1"),
    "sha256-a-number": lambda d: d["tokenizer"].update(sha256=5),
    "steps-text": lambda d: d["training"].update(steps="many"),
    "corpus-not-a-list": lambda d: d["training"].update(corpus="corpus.txt"),
}


def _config_cases() -> list[Case]:
    cases = []
    for name, change in CONFIG_EDITS.items():
        for cmd in (["info", "run"], ["generate", "-c", "run", "-p", "x", "-n", "2"]):
            cases.append(Case(f"config {name} ({cmd[0]})", "bad-input", cmd,
                              setup=edit_json("run/config.json", change), match="config.json"))
    for cmd in (["info", "run"], ["eval", "val.txt", "-c", "run"]):
        cases.append(Case(f"config deeply nested ({cmd[0]})", "bad-input", cmd,
                          setup=write("run/config.json", deep(100000)), match="config.json"))
        cases.append(Case(f"config a list ({cmd[0]})", "bad-input", cmd, setup=write("run/config.json", "[1]"),
                          match="config.json"))
    return cases


STATE = "run/resume/trainer_state.json"
STATE_EDITS = {
    "step-2.5": lambda d: d["trainer"].update(step=2.5),
    "no-trainer": lambda d: d.pop("trainer"),
    "sampler-state-text": lambda d: d["sampler"]["state"].update(state="x"),
    "rng-torch-not-base64": lambda d: d["rng"].update(torch="!!!not base64!!!"),
    "rng-python-short": lambda d: d["rng"].update(python=[1]),
    "unknown-trainer-field": lambda d: d["trainer"].update(extra=1),
    "optimizer-groups-text": lambda d: d.update(optimizer_groups="x"),
    "optimizer-groups-wrong": lambda d: d.update(optimizer_groups=[{"params": [0]}]),
    "elapsed-nan": lambda d: d["trainer"].update(elapsed=float("nan")),
    "last-eval-list": lambda d: d["trainer"].update(last_eval=[1]),
}


def _state_cases() -> list[Case]:
    cases = [Case(f"trainer state {name}", "bad-input", ["train", "--resume", "run", "--max-steps", "4"],
                  setup=edit_json(STATE, change), match="trainer_state|state|optimizer",
                  check=unchanged("run/model.safetensors", "run/resume/model.safetensors"))
             for name, change in STATE_EDITS.items()]
    cases.append(Case("trainer state deeply nested", "bad-input", ["train", "--resume", "run", "--max-steps", "4"],
                      setup=write(STATE, deep(100000)), match="trainer_state.json"))
    cases.append(Case("trainer state not json", "bad-input", ["train", "--resume", "run", "--max-steps", "4"],
                      setup=write(STATE, "{"), match="trainer_state.json"))
    return cases


WEIGHTS = "run/model.safetensors"
SAFETENSORS = {
    "header-length-2^62": safetensors_with({}, length=2**62),
    "header-not-json": safetensors_with(b"{not json"),
    "header-a-list": safetensors_with(b"[1, 2]"),
    "unknown-dtype": safetensors_with({"wte.weight": {"dtype": "Q99", "shape": [1], "data_offsets": [0, 4]}},
                                      bytes(4)),
    "offsets-beyond-the-file": safetensors_with({"wte.weight": {"dtype": "F32", "shape": [1000, 1000],
                                                                "data_offsets": [0, 4000000]}}, bytes(16)),
    "negative-shape": safetensors_with({"wte.weight": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
                                       bytes(4)),
    "overlapping-tensors": safetensors_with({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                             "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
    "empty-file": b"",
    "a-pickle": b"\x80\x04\x95" + bytes(64),
    "a-zip": b"PK\x03\x04" + bytes(64),
    "shapes-from-another-model": safetensors_with({"wte.weight": {"dtype": "F32", "shape": [2, 2],
                                                                  "data_offsets": [0, 16]}}, bytes(16)),
}


def _weights_cases() -> list[Case]:
    cases = []
    for name, data in SAFETENSORS.items():
        for cmd in (["info", "run"], ["generate", "-c", "run", "-p", "x", "-n", "2"]):
            if cmd[0] == "info" and name == "shapes-from-another-model":
                continue  # info reads the header only
            cases.append(Case(f"weights {name} ({cmd[0]})", "bad-input", cmd, setup=write(WEIGHTS, data),
                              match="model.safetensors", max_seconds=30))
    return cases


HF_EDITS = {
    "n_embd-2.5": lambda d: d.update(n_embd=2.5),
    "n_embd-text": lambda d: d.update(n_embd="64"),
    "n_head-0": lambda d: d.update(n_head=0),
    "n_positions-0": lambda d: d.update(n_positions=0),
    "n_head-does-not-divide": lambda d: d.update(n_head=5),
    "layer_norm_epsilon-negative": lambda d: d.update(layer_norm_epsilon=-1.0),
    "model_type-missing": lambda d: d.pop("model_type"),
    "vocab-disagrees-with-tokenizer": lambda d: d.update(vocab_size=400),
}


def _hf_cases() -> list[Case]:
    cases = [Case(f"hf config {name}", "bad-input", ["import-hf", "hf", "imp"], setup=edit_json("hf/config.json", c),
                  match="hf", check=nothing_new()) for name, c in HF_EDITS.items()]
    cases.append(Case("hf config names HF keys", "bad-input", ["import-hf", "hf", "imp"],
                      setup=edit_json("hf/config.json", lambda d: d.update(n_positions=0)), match="n_positions"))
    cases.append(Case("hf config deeply nested", "bad-input", ["import-hf", "hf", "imp"],
                      setup=write("hf/config.json", deep(100000)), match="config.json"))
    return cases


MISC = [
    Case("decode-nested-list", "bad-input", ["tokenizer", "decode"], stdin=b"[1, [2]]", match="integer token ids"),
    Case("decode-floats", "bad-input", ["tokenizer", "decode"], stdin=b"[1.5]", match="integer token ids"),
    Case("decode-true", "bad-input", ["tokenizer", "decode"], stdin=b"true", match="integer token ids"),
    Case("decode-out-of-vocab", "bad-input", ["tokenizer", "decode"], stdin=b"999999", match="outside the vocabulary"),
    Case("encode-missing-tokenizer", "bad-input", ["tokenizer", "encode", "--tokenizer", "nowhere"],
         match="no tokenizer"),
    Case("encode-invalid-utf8", "bad-input", ["tokenizer", "encode"], stdin=b"ok \xff\xfe", match="not UTF-8"),
    Case("tokenizer-train-vocab-1e30", "bad-input", ["tokenizer", "train", "corpus.txt", "--vocab-size", "1e30",
                                                     "--out", "t2"], match="vocab-size", check=nothing_new()),
    Case("info-missing", "bad-input", ["info", "nowhere"], match="no such run folder"),
    Case("info-a-file", "bad-input", ["info", "corpus.txt"], match="not a folder"),
    Case("eval-empty-file", "bad-input", ["eval", "empty.txt", "-c", "run"], setup=write("empty.txt", ""),
         match="empty"),
    Case("generate-stdin-closed-with-prompt-dash", "bad-input", ["generate", "-c", "run", "-p", "-"], stdin=None,
         match="stdin is closed"),
    Case("train-stdin-closed", "bad-input", ["train", "-", "--out", "z"], stdin=None, match="stdin is closed",
         check=nothing_new()),
    Case("attention-layer-out-of-range", "bad-input", ["attention", "-c", "run", "-p", "hi", "--layer", "99"],
         match="--layer must be between 0 and 0"),
    Case("attention-empty-prompt", "bad-input", ["attention", "-c", "run", "-p", ""], match="the prompt is empty"),
    Case("attention-binary-stdin", "hang", ["attention", "-c", "run"], stdin="/dev/zero", match="binary data",
         max_seconds=20),
    Case("attention-stdout-closed", "streams", ["attention", "-c", "run", "-p", "hi"], stdout=None,
         match="stdout is closed"),
    Case("attention-on-a-recurrent-run", "bad-input", ["attention", "-c", "run", "-p", "hi"],
         setup=edit_json("run/config.json", lambda d: d["model"].update(arch="lstm")), match="need a GPT"),
    Case("attention-png-where-nothing-can-be-written", "bad-input",
         ["attention", "-c", "run", "-p", "hi", "--out", "/proc/nowhere/a.png"], match="cannot write --out"),
    Case("attention-png-onto-a-folder", "bad-input", ["attention", "-c", "run", "-p", "hi", "--out", "notes"],
         match="is a folder"),
    Case("plot-png-onto-a-folder", "bad-input", ["plot", "run", "--out", "notes"], match="is a folder"),
    Case("compare-from-stdin-refused", "bad-input", ["compare", "-"], stdin=b"text", match="save stdin to a file",
         check=nothing_new()),
    Case("compare-unknown-arch", "bad-input", ["compare", "corpus.txt", "--arch", "transformer"],
         match="not one of", check=nothing_new()),
    Case("compare-over-a-users-folder-refused", "data-loss", ["compare", "corpus.txt", "--out", "notes",
                                                              "--overwrite"],
         match="not a comparison folder", check=nothing_new()),
    Case("compare-stdout-closed", "streams", ["compare", "corpus.txt", "--out", "cmp"], stdout=None,
         match="stdout is closed", check=nothing_new()),
    Case("plot-a-folder-without-metrics", "bad-input", ["plot", "notes"], match="has no metrics.jsonl"),
    Case("plot-a-missing-run", "bad-input", ["plot", "nowhere"], match="no such run folder"),
    Case("plot-damaged-metrics", "bad-input", ["plot", "run"],
         setup=lambda ws: (ws / "run/metrics.jsonl").write_text("oops\n{}\n"), match="line 1"),
    Case("stale-lock-with-a-live-pid-is-taken-over", "corrupt-state", ["train", "--resume", "run", "--max-steps",
                                                                       "3"], code=0,
         setup=lambda ws: (ws / "run/.lock").write_text(str(os.getppid())), match="taking over the lock"),
]


def all_cases() -> list[Case]:
    return [*DATA_LOSS, *CORRUPT_STATE, *HANG_MEMORY, *_stream_cases(), *SIGNALS, *_flag_cases(), *_config_cases(),
            *_state_cases(), *_weights_cases(), *_hf_cases(), *MISC, *round3.cases()]


# The quick set: a few of each class, in every test run; CI runs all (the rest are slow).
QUICK = {"overwrite-bad-seed-keeps-old", "overwrite-users-folder-refused", "export-over-users-folder-refused",
         "resume-with-a-damaged-metrics-line", "cache-overwritten-in-place-is-rebuilt",
         "resume-after-corpus-edit-refused", "prompts-split-on-newlines-only", "fifo-in-a-corpus-folder-is-skipped",
         "train-from-dev-zero-stops-at-once", "config-with-100000-layers-refused-before-building",
         "generate-stdout-closed", "generate-stderr-closed", "generate-stdout-full", "info-json-reader-leaves",
         "generate-ascii-locale", "ctrl-c-in-generate", "train --seed -1", "generate --repetition-penalty 1e-308",
         "generate --prompt bad \udcff byte", "config n_layer-2.5 (info)", "trainer state step-2.5",
         "weights header-length-2^62 (info)", "hf config names HF keys", "stale-lock-with-a-live-pid-is-taken-over"}

import round3  # noqa: E402  (issue 29's round; it uses the helpers above, so it comes after them)

QUICK |= round3.QUICK
