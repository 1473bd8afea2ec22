"""Round 3's hostile cases (issue 29): outputs named over devices, FIFOs, sockets, links,
existing files and the files a command reads; run folders whose members link outside;
paths that are not UTF-8, hold a newline or are near the 255-byte name limit; --json
that must stay strict; flags --init, --resume or a preset would drop; durations; plot's
memory on a long metrics.jsonl; the umask; read-only runs and a cache path that is a
file. GROUPS maps each of those classes to its cases (docs/errors.md counts them)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
from pathlib import Path

import cases as table
from cases import TRAIN, _expect, both, nothing_new, unchanged, write
from harness import Case, Result

ODD = os.fsdecode(b"run\xff")  # a name the OS allows and UTF-8 does not
LONG = "r" * 254  # a folder name 1 byte under the limit
LONG_PNG = "a" * 251 + ".png"  # 255 bytes
INIT = ["train", "corpus.txt", "--init", "run", "--max-steps", "1", "--batch-size", "4", "--eval-iters", "1",
        "--out", "ft"]
RESUME = ["train", "--resume", "run", "--max-steps", "8"]


# -- setups -------------------------------------------------------------------------------


def node(rel: str, kind: str):
    """A device (a char device like /dev/full where mknod is allowed, else a FIFO), a
    FIFO or a socket at `rel`."""
    def setup(ws: Path) -> None:
        path = ws / rel
        if kind == "device":
            try:
                os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
                return
            except PermissionError:
                kind_ = "fifo"
        else:
            kind_ = kind
        if kind_ == "fifo":
            os.mkfifo(path)
        else:
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(path))
            s.close()
    return setup


def still_node(rel: str):
    def check(ws: Path, r: Result) -> None:
        _expect(not stat.S_ISREG((ws / rel).lstat().st_mode), f"{rel} was replaced by a regular file")
    return check


def link_out(rel: str):
    """`rel` (in the run) moved to ./outside and replaced by a link to it; or, for a
    member the run lacks, a link to the user's notes."""
    def setup(ws: Path) -> None:
        path, outside = ws / rel, ws / "outside"
        if path.exists():
            shutil.move(path, outside)
        else:
            shutil.copyfile(ws / "notes/mine.txt", outside)
        path.symlink_to(outside.resolve())
    return setup


def outside_untouched(rel: str):
    """What the link names holds what it held, the link is still a link, and nothing
    hidden was left in the run folder."""
    def check(ws: Path, r: Result) -> None:
        base = table.BASE
        source = base / rel if (base / rel).exists() else base / "notes/mine.txt"
        outside = ws / "outside"
        if source.is_dir():
            got = {p.relative_to(outside): p.read_bytes() for p in outside.rglob("*") if p.is_file()}
            want = {p.relative_to(source): p.read_bytes() for p in source.rglob("*") if p.is_file()}
            _expect(got == want, "the folder outside changed")
        else:
            _expect(outside.read_bytes() == source.read_bytes(), "the file outside changed")
        _expect((ws / rel).is_symlink(), f"{rel} is no longer the link")
        no_hidden("run")(ws, r)
    return check


def no_hidden(*folders: str):
    def check(ws: Path, r: Result) -> None:
        for folder in folders:
            new = {p.name for p in (ws / folder).iterdir() if p.name.startswith(".") and p.name != ".lock"}
            new -= {p.name for p in (table.BASE / folder).iterdir()} if (table.BASE / folder).is_dir() else set()
            _expect(not new, f"hidden names left in {folder}: {sorted(new)}")
    return check


def linked(name: str, target: str):
    def setup(ws: Path) -> None:
        (ws / target).mkdir(exist_ok=True)
        (ws / name).symlink_to(target)
    return setup


def copy(src: str, dst: str):
    def setup(ws: Path) -> None:
        shutil.copytree(ws / src, ws / dst) if (ws / src).is_dir() else shutil.copyfile(ws / src, ws / dst)
    return setup


def then(*setups):
    def setup(ws: Path) -> None:
        for s in setups:
            s(ws)
    return setup


def read_only(*rels: str):
    def setup(ws: Path) -> None:
        for rel in rels:
            (ws / rel).mkdir(exist_ok=True)
            for p in [ws / rel, *(ws / rel).rglob("*")]:
                p.chmod(p.stat().st_mode & ~0o222)
    return setup


def metrics(lines: int, evals_every: int = 1000, extra: str = ""):
    """A run's metrics.jsonl with `lines` train records (about 150 bytes each)."""
    def setup(ws: Path) -> None:
        with open(ws / "run/metrics.jsonl", "w") as f:
            for i in range(1, lines + 1):
                f.write(f'{{"type": "train", "step": {i}, "loss": {6.5 - i * 1e-6}, "lr": 0.001, "tokens": {i * 128}, '
                        f'"tokens_per_sec": 8716.99, "elapsed": {i * 0.2}}}\n')
                if i % evals_every == 0:
                    f.write(f'{{"type": "eval", "step": {i}, "tokens": {i * 128}, "elapsed": {i * 0.2}, '
                            f'"train_loss": 5.1, "val_loss": 5.2, "val_bpb": 2.1, "best_val_loss": 5.2}}\n')
            f.write(extra)
    return setup


def edit_metrics(old: str, new: str):
    def setup(ws: Path) -> None:
        text = (ws / "run/metrics.jsonl").read_text()
        (ws / "run/metrics.jsonl").write_text(text.replace(old, new, 1))
    return setup


# -- checks -------------------------------------------------------------------------------


def strict_json(*must_hold: str, generated: bool = False):
    """stdout is one valid UTF-8 JSON document without NaN or Infinity (a generated text
    may hold U+FFFD itself: a model can end on part of a character)."""
    def check(ws: Path, r: Result) -> None:
        _expect(generated or "\ufffd" not in r.stdout, "stdout is not UTF-8")
        doc = json.loads(r.stdout, parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(c)))
        _expect(doc is not None, "no JSON")
        for text in must_hold:
            _expect(text in r.stdout, f"{text!r} not in {r.stdout[:300]!r}")
    return check


def modes(mode: int, *rels: str):
    def check(ws: Path, r: Result) -> None:
        files = [p for rel in rels for p in ([ws / rel] if (ws / rel).is_file() else (ws / rel).rglob("*"))
                 if p.is_file() and p.name != ".lock"]
        bad = {str(p.relative_to(ws)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
               if stat.S_IMODE(p.stat().st_mode) != mode}
        _expect(files and not bad, f"modes other than {oct(mode)}: {bad}")
    return check


def present(*rels: str):
    def check(ws: Path, r: Result) -> None:
        for rel in rels:
            _expect((ws / rel).exists(), f"{rel} is missing")
    return check


def png(rel: str):
    return lambda ws, r: _expect((ws / rel).read_bytes()[:4] == b"\x89PNG", f"{rel} is not a PNG")


def thinned(ws: Path, r: Result) -> None:
    doc = json.loads(r.stdout)
    lengths = {k: len(v) for k, v in doc["runs"]["run"].items()}
    _expect(max(lengths.values()) <= 4097 and doc["thinned"], f"not thinned: {lengths}")


# -- the classes --------------------------------------------------------------------------

ATTENTION = ["attention", "-c", "run", "-p", "hi", "--out"]
TOKENIZER = ["tokenizer", "train", "corpus.txt", "--vocab-size", "280", "--out"]
NODE = "is a (device|FIFO|socket), not a regular file"

OUTPUTS = [
    *[Case(f"r3-{cmd}-out-onto-a-{kind}", "data-loss", [*args, "node"], match=NODE, setup=node("node", kind),
           check=both(still_node("node"), nothing_new("node")), timeout=60)
      for cmd, args in (("attention", ATTENTION), ("plot", ["plot", "run", "--out"]), ("tokenizer", TOKENIZER))
      for kind in ("device", "fifo", "socket")],
    Case("r3-export-hf-onto-a-fifo", "data-loss", ["export-hf", "run", "node"], setup=node("node", "fifo"),
         match="exists and is not a folder", check=still_node("node")),
    Case("r3-train-out-onto-a-device", "data-loss", [*TRAIN, "--out", "node", "--overwrite"],
         setup=node("node", "device"), match="exists and is not a folder", check=still_node("node")),
    Case("r3-attention-out-onto-the-model-it-reads", "data-loss", [*ATTENTION, "run/model.safetensors", "--overwrite"],
         match="a file this command reads", check=unchanged("run")),
    Case("r3-attention-out-onto-its-config", "data-loss", [*ATTENTION, "run/config.json"],
         match="a file this command reads", check=unchanged("run")),
    Case("r3-plot-out-onto-the-metrics-it-reads", "data-loss", ["plot", "run", "--out", "run/metrics.jsonl",
                                                               "--overwrite"],
         match="a file this command reads", check=unchanged("run")),
    Case("r3-tokenizer-out-onto-its-corpus", "data-loss", ["tokenizer", "train", "c.json", "--out", "c.json",
                                                          "--overwrite"],
         setup=write("c.json", "plain text " * 500), match="a file this command reads",
         check=lambda ws, r: _expect((ws / "c.json").read_text() == "plain text " * 500, "c.json changed")),
    Case("r3-tokenizer-out-inside-its-corpus-folder", "data-loss", ["tokenizer", "train", "notes", "--vocab-size",
                                                                   "280", "--out", "notes/t.json", "--overwrite"],
         setup=write("notes/t.json", "{}"), match="a file this command reads",
         check=lambda ws, r: _expect((ws / "notes/t.json").read_text() == "{}", "notes/t.json changed")),
    Case("r3-plot-over-a-users-file-refused", "data-loss", ["plot", "run", "--out", "notes/mine.txt"],
         match="exists: pass --overwrite", check=nothing_new()),
    Case("r3-attention-over-an-existing-png-refused", "data-loss", [*ATTENTION, "a.png"], setup=write("a.png", "mine"),
         match="exists: pass --overwrite", check=lambda ws, r: _expect((ws / "a.png").read_text() == "mine", "a.png")),
    Case("r3-plot-over-an-existing-png-with-overwrite", "data-loss", ["plot", "run", "--out", "c.png", "--overwrite"],
         code=0, setup=write("c.png", "old"), check=png("c.png")),
    Case("r3-attention-out-a-link-to-a-users-file", "data-loss", [*ATTENTION, "a.png", "--overwrite"],
         setup=lambda ws: (ws / "a.png").symlink_to("notes/mine.txt"), match="is a symbolic link",
         check=both(nothing_new("a.png"), lambda ws, r: _expect((ws / "a.png").is_symlink(), "the link is gone"))),
    Case("r3-tokenizer-out-a-link-to-a-users-file", "data-loss", [*TOKENIZER, "t.json", "--overwrite"],
         setup=lambda ws: (ws / "t.json").symlink_to("notes/mine.txt"), match="is a symbolic link",
         check=nothing_new("t.json")),
]

MEMBERS = [".lock", "resume", "model.safetensors", "metrics.jsonl", "config.json", "tokenizer.json",
           "resume/trainer_state.json", "resume/optimizer.safetensors", "resume.old"]
SYMLINKS = [
    *[Case(f"r3-resume-with-{m.replace('/', '-').strip('.')}-linked-outside", "data-loss", RESUME,
           setup=link_out(f"run/{m}"), match="is a symbolic link", check=outside_untouched(f"run/{m}"))
      for m in MEMBERS],
    *[Case(f"r3-{name}-overwrite-through-a-linked-out", "data-loss", [*args, "--overwrite"],
           setup=lambda ws, t=target: (ws / "lk").symlink_to(t), match="is a symbolic link",
           check=both(nothing_new("lk"), lambda ws, r: _expect((ws / "lk").is_symlink(), "lk is no longer a link")))
      for name, args, target in (("train", [*TRAIN, "--out", "lk"], "keep"), ("import-hf", ["import-hf", "hf", "lk"],
                                                                               "keep"),
                                 ("export-hf", ["export-hf", "run", "lk"], "hf"),
                                 ("compare", ["compare", "corpus.txt", "--out", "lk"], "notes"))],
    Case("r3-train-out-a-link-to-an-empty-folder", "data-loss", [*TRAIN, "--out", "lk"], setup=linked("lk", "empty"),
         match="is a symbolic link", check=both(nothing_new("lk", "empty"), no_hidden("."))),
    Case("r3-import-over-a-run-whose-lock-links-outside", "data-loss", ["import-hf", "hf", "keep", "--overwrite"],
         setup=lambda ws: (ws / "keep/.lock").symlink_to((ws / "notes/mine.txt").resolve()),
         match="is a symbolic link", check=unchanged("notes")),
    Case("r3-resume-with-a-fifo-lock-does-not-hang", "hang", RESUME, setup=node("run/.lock", "fifo"),
         match="not a regular file", max_seconds=30, timeout=60),
    Case("r3-import-over-a-run-with-a-fifo-lock-does-not-hang", "hang", ["import-hf", "hf", "keep", "--overwrite"],
         setup=node("keep/.lock", "fifo"), match="not a regular file", max_seconds=30, timeout=60,
         check=unchanged("keep")),
]

NON_UTF8 = [
    Case("r3-generate-from-a-non-utf8-run", "bad-input", ["generate", "-c", ODD, "-p", "hi", "-n", "3", "--greedy"],
         code=0, setup=copy("run", ODD), check=lambda ws, r: _expect(r.stdout.strip() != "", "no text")),
    Case("r3-eval-a-non-utf8-run", "bad-input", ["eval", "val.txt", "-c", ODD, "--json"], code=0,
         setup=copy("run", ODD), check=strict_json("run\\\\xff")),
    Case("r3-resume-a-non-utf8-run", "bad-input", ["train", "--resume", ODD, "--max-steps", "8", "--json"], code=0,
         setup=copy("run", ODD), check=both(strict_json('"steps": 8'), no_hidden(ODD))),
    Case("r3-info-json-of-a-non-utf8-run", "streams", ["info", ODD, "--json"], code=0, setup=copy("run", ODD),
         check=strict_json("run\\\\xff")),
    Case("r3-export-hf-from-a-non-utf8-run", "bad-input", ["export-hf", ODD, "e", "--json"], code=0,
         setup=copy("run", ODD), check=both(strict_json('"out": "e"'), present("e/model.safetensors"))),
    Case("r3-export-hf-to-a-non-utf8-out", "bad-input", ["export-hf", "run", ODD], code=0,
         check=present(f"{ODD}/model.safetensors")),
    Case("r3-import-hf-to-a-non-utf8-out", "bad-input", ["import-hf", "hf", ODD, "--json"], code=0,
         check=both(strict_json("run\\\\xff"), present(f"{ODD}/model.safetensors"))),
    Case("r3-train-out-a-non-utf8-name", "bad-input", [*TRAIN, "--out", ODD, "--json"], code=0,
         check=both(strict_json("run\\\\xff"), present(f"{ODD}/resume/optimizer.safetensors"))),
    Case("r3-plot-a-non-utf8-run", "bad-input", ["plot", ODD, "--out", "c.png", "--json"], code=0,
         setup=copy("run", ODD), check=both(png("c.png"), strict_json("run\\\\xff"))),
    Case("r3-attention-on-a-non-utf8-run-and-out", "bad-input", ["attention", "-c", ODD, "-p", "hi", "--out",
                                                                 ODD + ".png"],
         code=0, setup=copy("run", ODD), check=png(ODD + ".png")),
    Case("r3-tokenizer-out-a-non-utf8-name", "bad-input", [*TOKENIZER, ODD + ".json"], code=0,
         check=present(ODD + ".json")),
    Case("r3-init-from-a-non-utf8-run", "bad-input", [*INIT[:2], "--init", ODD, *INIT[4:]], code=0,
         setup=copy("run", ODD), check=present("ft/model.safetensors")),
    Case("r3-a-missing-non-utf8-run-is-named-escaped", "bad-input", ["info", "nowhere" + ODD[-1]],
         match=r"nowhere\\xff: no such run folder"),
    Case("r3-eval-a-non-utf8-corpus-name", "bad-input", ["eval", "val" + ODD[-1] + ".txt", "-c", "run"], code=0,
         setup=copy("val.txt", "val" + ODD[-1] + ".txt")),
    Case("r3-train-on-a-non-utf8-corpus-name", "bad-input", ["train", "c" + ODD[-1] + ".txt", *TRAIN[2:], "--out", "n",
                                                            "--json"],
         code=0, setup=copy("corpus.txt", "c" + ODD[-1] + ".txt"), check=strict_json()),
]

JSON = [
    Case("r3-plot-json-with-nan-in-metrics-refused", "streams", ["plot", "run", "--json"],
         setup=edit_metrics('"loss": ', '"loss": NaN, "was": '), match="line 1.loss must be a number"),
    Case("r3-plot-json-with-infinity-in-metrics-refused", "streams", ["plot", "run", "--json"],
         setup=edit_metrics('"val_bpb": ', '"val_bpb": -Infinity, "was": '), match="val_bpb must be a number"),
    Case("r3-plot-json-is-strict", "streams", ["plot", "run", "--out", "c.png", "--json"], code=0,
         check=strict_json('"val_bpb"')),
    Case("r3-generate-json-of-a-non-utf8-run", "streams", ["generate", "-c", ODD, "-p", "hi", "-n", "2", "--json"],
         code=0, setup=copy("run", ODD), check=strict_json('"finish_reason"', generated=True)),
    Case("r3-plot-a-record-without-its-fields-refused", "bad-input", ["plot", "run"],
         setup=metrics(3, extra='{"type": "train", "step": 4}\n'), match="line 4 has no 'tokens'"),
    Case("r3-plot-a-text-loss-refused", "bad-input", ["plot", "run"],
         setup=edit_metrics('"loss": ', '"loss": "low", "was": '), match="line 1.loss must be a number"),
]

NEWLINE = r"\\n"
NEWLINES = [
    Case("r3-info-of-a-missing-run-with-a-newline", "bad-input", ["info", "no\nsuch"], match=f"no{NEWLINE}such: no "),
    Case("r3-generate-from-a-missing-run-with-a-newline", "bad-input", ["generate", "-c", "a\nb", "-p", "x"],
         match=f"a{NEWLINE}b"),
    Case("r3-eval-a-missing-file-with-a-newline", "bad-input", ["eval", "missing\nfile.txt", "-c", "run"],
         match=f"missing{NEWLINE}file"),
    Case("r3-plot-over-an-existing-file-with-a-newline", "bad-input", ["plot", "run", "--out", "x\ny.png"],
         setup=write("x\ny.png", "mine"), match=f"x{NEWLINE}y.png exists"),
    Case("r3-train-out-under-a-file-with-a-newline", "bad-input", [*TRAIN, "--out", "corpus.txt/x\ny"],
         match=f"x{NEWLINE}y", check=nothing_new()),
    Case("r3-export-hf-from-a-missing-run-with-a-newline", "bad-input", ["export-hf", "no\nrun", "e"],
         match=f"no{NEWLINE}run"),
    Case("r3-resume-a-missing-run-with-a-carriage-return", "bad-input", ["train", "--resume", "a\rb"],
         match=r"a\\rb"),
]

LONG_NAMES = [
    Case("r3-train-out-a-254-byte-name", "corrupt-state", [*TRAIN, "--out", LONG], code=0,
         check=both(present(f"{LONG}/resume/trainer_state.json"), no_hidden(".", LONG))),
    Case("r3-export-hf-to-a-254-byte-name", "corrupt-state", ["export-hf", "run", LONG], code=0,
         check=both(present(f"{LONG}/model.safetensors"), no_hidden("."))),
    Case("r3-import-hf-to-a-254-byte-name", "corrupt-state", ["import-hf", "hf", LONG], code=0,
         check=present(f"{LONG}/model.safetensors")),
    Case("r3-attention-out-a-255-byte-name", "corrupt-state", [*ATTENTION, LONG_PNG], code=0, check=png(LONG_PNG)),
    Case("r3-plot-out-a-255-byte-name", "corrupt-state", ["plot", "run", "--out", LONG_PNG], code=0,
         check=png(LONG_PNG)),
    Case("r3-tokenizer-out-a-255-byte-name", "corrupt-state", [*TOKENIZER, "t" * 250 + ".json"], code=0,
         check=present("t" * 250 + ".json")),
    Case("r3-resume-a-run-with-a-254-byte-name", "corrupt-state", ["train", "--resume", LONG, "--max-steps", "8"],
         code=0, setup=copy("run", LONG), check=no_hidden(LONG, f"{LONG}/resume")),
    Case("r3-train-out-a-256-byte-name-refused", "bad-input", [*TRAIN, "--out", "r" * 256],
         match="longer than the file system allows", check=nothing_new()),
    Case("r3-info-of-a-300-byte-name-refused", "bad-input", ["info", "r" * 300],
         match="longer than the file system allows"),
    Case("r3-plot-out-a-300-byte-name-refused", "bad-input", ["plot", "run", "--out", "a" * 300 + ".png"],
         match="File name too long"),
]

FLAGS = [
    *[Case(f"r3-init-with-{name}-refused", "bad-input", [*INIT, *args], match=message, check=nothing_new())
      for name, args, message in (
          ("another-n-layer", ["--n-layer", "2"], "--n-layer 2 disagrees with the model --init run starts from"),
          ("another-arch", ["--arch", "lstm"], "--arch lstm disagrees"),
          ("another-vocab", ["--vocab-size", "500"], "--vocab-size 500 disagrees"),
          ("another-block-size", ["--block-size", "64"], "--block-size 64 disagrees"),
          ("another-width-and-heads", ["--n-embd", "64", "--n-head", "4"], "--n-head 4, --n-embd 64 disagree"),
          ("other-positions", ["--pos-encoding", "sinusoidal"], "--pos-encoding sinusoidal disagrees"))],
    Case("r3-init-with-a-preset-warns-once", "bad-input", [*INIT, "--preset", "small", "--block-size", "32"], code=0,
         match="warning: --init run fixes the model shape, so --preset small's n_layer 6",
         check=lambda ws, r: _expect(r.stderr.count("--preset small's") == 1, "warned more than once")),
    Case("r3-init-with-the-same-shape-trains", "bad-input", [*INIT, "--n-layer", "1", "--n-embd", "32"], code=0),
    Case("r3-init-with-another-dropout-trains", "bad-input", [*INIT, "--dropout", "0.1"], code=0),
    Case("r3-resume-names-every-fixed-flag", "bad-input", [*RESUME, "--lr", "0.1", "--n-layer", "3"],
         match="--lr, --n-layer cannot change when resuming", check=unchanged("run")),
    Case("r3-resume-with-another-preset-refused", "bad-input", [*RESUME, "--preset", "small"],
         match="--preset cannot change", check=unchanged("run")),
    Case("r3-resume-with-another-arch-refused", "bad-input", [*RESUME, "--arch", "gru"], match="--arch cannot change"),
    *[Case(f"r3-max-time-{text.replace(' ', '-')}-refused", "bad-input", [*TRAIN, "--max-time", text, "--out", "n"],
           match="--max-time", check=nothing_new())
      for text in ("1h1h", "1m1h", "30s10m", "1h 30m", "-5m", "10m10m")],
    Case("r3-max-time-1h30m-trains", "bad-input", [*TRAIN, "--max-time", "1h30m", "--out", "n"], code=0),
]

MEMORY = [
    Case("r3-plot-a-150-mb-metrics-in-bounded-memory", "memory", ["plot", "run", "--out", "c.png"], code=0,
         setup=metrics(1_000_000), memory_mb=1536, max_seconds=60, timeout=120, match="thinned",
         check=png("c.png")),
    Case("r3-plot-a-50-mb-metrics-line-refused", "memory", ["plot", "run"], memory_mb=1536, max_seconds=30,
         setup=metrics(3, extra='{"type": "train", "step": 4, "x": "' + "x" * (50 << 20) + '"}\n'),
         match="line 4 is longer than"),
    Case("r3-plot-json-of-long-metrics-is-thinned", "memory", ["plot", "run", "--out", "c.png", "--json"], code=0,
         setup=metrics(20_000, evals_every=2), check=thinned),
]

UMASK = [
    Case("r3-export-hf-under-umask-027", "corrupt-state", ["export-hf", "run", "e"], code=0, umask=0o027,
         check=modes(0o640, "e")),
    Case("r3-train-under-umask-027", "corrupt-state", [*TRAIN, "--out", "u"], code=0, umask=0o027,
         check=modes(0o640, "u")),
    Case("r3-resume-under-umask-077", "corrupt-state", RESUME, code=0, umask=0o077,
         check=modes(0o600, "run/resume", "run/config.json")),
    Case("r3-import-hf-under-umask-027", "corrupt-state", ["import-hf", "hf", "imp"], code=0, umask=0o027,
         check=modes(0o640, "imp")),
    Case("r3-tokenizer-under-umask-027", "corrupt-state", [*TOKENIZER, "t.json"], code=0, umask=0o027,
         check=modes(0o640, "t.json")),
    Case("r3-plot-under-umask-027", "corrupt-state", ["plot", "run", "--out", "c.png"], code=0, umask=0o027,
         check=modes(0o640, "c.png")),
    Case("r3-attention-under-umask-002", "corrupt-state", [*ATTENTION, "a.png"], code=0, umask=0o002,
         check=modes(0o664, "a.png")),
]

READ_ONLY = [
    Case("r3-resume-a-read-only-run", "bad-input", RESUME, setup=read_only("run"), unprivileged=True,
         match="cannot write to run: Permission denied", check=unchanged("run")),
    Case("r3-resume-with-a-read-only-resume-folder", "bad-input", RESUME, setup=read_only("run/resume"),
         unprivileged=True, match="cannot write to run/resume", check=unchanged("run")),
    Case("r3-export-hf-into-a-read-only-folder", "bad-input", ["export-hf", "run", "ro/e"], setup=read_only("ro"),
         unprivileged=True, match="permission denied"),
    Case("r3-tokenizer-into-a-read-only-folder", "bad-input", [*TOKENIZER, "ro/t.json"], setup=read_only("ro"),
         unprivileged=True, match="not a folder you can write to"),
    Case("r3-cache-dir-is-a-file", "bad-input", ["eval", "val.txt", "-c", "run"],
         env={"GPTCLI_CACHE_DIR": "notes/mine.txt"}, match="GPTCLI_CACHE_DIR notes/mine.txt is a file"),
    Case("r3-cache-dir-under-a-file", "bad-input", [*TRAIN, "--out", "n"], env={"GPTCLI_CACHE_DIR": "corpus.txt/c"},
         match="lies under corpus.txt, a file", check=nothing_new()),
    Case("r3-xdg-cache-home-is-a-file", "bad-input", ["eval", "val.txt", "-c", "run"],
         env={"GPTCLI_CACHE_DIR": "", "XDG_CACHE_HOME": "notes/mine.txt"}, match="the cache folder"),
]

GROUPS = {"outputs": OUTPUTS, "symlinks": SYMLINKS, "non-utf8": NON_UTF8, "json": JSON, "newlines": NEWLINES,
          "long-names": LONG_NAMES, "flags": FLAGS, "memory": MEMORY, "umask": UMASK, "read-only": READ_ONLY}


def cases() -> list[Case]:
    return [case for group in GROUPS.values() for case in group]


QUICK = {"r3-attention-out-onto-a-device", "r3-resume-with-lock-linked-outside", "r3-generate-from-a-non-utf8-run",
         "r3-init-with-another-n-layer-refused", "r3-max-time-1h1h-refused", "r3-export-hf-under-umask-027",
         "r3-cache-dir-is-a-file"}
