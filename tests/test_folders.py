"""Output folders: refused before any work, built beside the target, swapped in whole."""

from __future__ import annotations

import pytest

from gptcli.errors import RunError, UsageError
from gptcli.store import folders


def _check(out, overwrite=False, writer=lambda p: None):
    folders.check_out(out, overwrite, label=f"--out {out}", kind="a test folder",
                      is_kind=lambda p: (p / "mark").exists(), writer=writer)


def test_check_out_refuses_what_it_must_not_replace(tmp_path):
    tmp_path = tmp_path / "here"
    tmp_path.mkdir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="exists and is not a folder"):
        _check(tmp_path / "file")
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("precious")
    with pytest.raises(UsageError, match="is not empty: pass --overwrite"):
        _check(full)
    with pytest.raises(UsageError, match="it is not a test folder"):
        _check(full, overwrite=True)
    (full / "mark").write_text("")
    with pytest.raises(UsageError, match="gptcli process 42 is writing to it"):
        _check(full, overwrite=True, writer=lambda p: 42)
    _check(full, overwrite=True)  # its own kind, nobody writing: allowed
    with pytest.raises(UsageError, match="is not a folder"):
        _check(tmp_path / "file" / "below")
    _check(tmp_path / "new" / "deeper")  # missing parents are fine
    assert not (tmp_path / "new").exists()  # and nothing was created


def test_staged_replaces_the_target_only_when_the_block_succeeds(tmp_path):
    tmp_path = tmp_path / "here"
    tmp_path.mkdir()
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(ValueError):
        with folders.staged(target) as stage:
            (stage / "new.txt").write_text("half")
            raise ValueError("boom")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    with folders.staged(target) as stage:
        (stage / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_write_inside_names_the_target_not_the_staging_folder(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RunError) as raised:
        with folders.staged(target) as stage:
            raise RunError(f"could not write {stage / 'model.safetensors'}: No space left on device")
    assert str(raised.value) == f"could not write {target / 'model.safetensors'}: No space left on device"
    with pytest.raises(RunError, match=f"could not write {target}: No space left on device"):
        with folders.staged(target):
            raise OSError(28, "No space left on device")
    assert not target.exists()


def test_staged_never_touches_a_folder_the_user_named_like_a_backup(tmp_path):
    here = tmp_path / "here"
    (here / "out.old").mkdir(parents=True)
    (here / "out.old" / "keep.txt").write_text("precious")
    (here / "out").mkdir()
    with folders.staged(here / "out") as stage:
        (stage / "new.txt").write_text("new")
    assert (here / "out.old" / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in here.iterdir()) == ["out", "out.old"]


def _nodes(where):
    """A FIFO, a socket, a symbolic link and a regular file, as hostile --out targets."""
    import os
    import socket

    os.mkfifo(where / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(where / "sock"))
    (where / "notes.txt").write_text("precious")
    (where / "link.png").symlink_to(where / "notes.txt")
    return sock


def test_one_file_output_policy_refuses_nodes_existing_files_and_inputs(tmp_path):
    sock = _nodes(tmp_path)
    try:
        for name, kind in (("fifo", "a FIFO"), ("sock", "a socket"), ("link.png", "a symbolic link")):
            for overwrite in (False, True):  # --overwrite replaces regular files only
                with pytest.raises(UsageError, match=f"is {kind}, not a regular file"):
                    folders.check_file_out(tmp_path / name, "--out", overwrite)
        with pytest.raises(UsageError, match="notes.txt exists: pass --overwrite"):
            folders.check_file_out(tmp_path / "notes.txt", "--out")
        folders.check_file_out(tmp_path / "notes.txt", "--out", overwrite=True)
        with pytest.raises(UsageError, match="is a file this command reads"):
            folders.check_file_out(tmp_path / "notes.txt", "--out", True, reads=[tmp_path / "link.png"])
        folders.check_file_out(tmp_path / "new.png", "--out")
    finally:
        sock.close()


def test_an_atomic_write_never_renames_over_a_device_fifo_or_socket(tmp_path):
    import stat

    from gptcli.store import atomic

    tmp_path = tmp_path / "n"  # a folder of its own: nothing else in it
    tmp_path.mkdir()
    sock = _nodes(tmp_path)
    try:
        for name, is_kind in (("fifo", stat.S_ISFIFO), ("sock", stat.S_ISSOCK)):
            with pytest.raises(RunError, match="it is not a regular file"):
                atomic.write_text(tmp_path / name, "x")
            assert is_kind((tmp_path / name).lstat().st_mode)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link.png", "notes.txt", "sock"]  # no temp left
    finally:
        sock.close()


def test_a_name_near_the_255_byte_limit_still_gets_written(tmp_path):
    """Temp names keep only the start of the target's name, so a target whose own name
    is nearly as long as a name may be can still be written and swapped in."""
    from gptcli.store import atomic

    name = "n" * 250
    atomic.write_text(tmp_path / name, "x")
    assert (tmp_path / name).read_text() == "x"
    with folders.staged(tmp_path / ("d" * 250)) as stage:
        (stage / "f").write_text("y")
    with folders.staged(tmp_path / ("d" * 250)) as stage:  # replacing it: the old one goes aside first
        (stage / "f").write_text("z")
    assert (tmp_path / ("d" * 250) / "f").read_text() == "z"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_symlinked_output_folder_is_refused_and_a_swap_leaves_no_hidden_link(tmp_path):
    """--out LINK would swap the link, not what it names, and take the lock outside: it is
    refused. Should a link reach the swap anyway, it is removed itself: no hidden
    .NAME.old.* link is left, and the folder it names keeps its files."""
    tmp_path = tmp_path / "here"
    tmp_path.mkdir()
    real = tmp_path / "real"
    real.mkdir()
    (real / "mark").write_text("precious")
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(UsageError, match="is a symbolic link"):
        _check(link, overwrite=True)
    with folders.staged(link) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]
    assert not link.is_symlink() and (link / "new.txt").exists() and (real / "mark").read_text() == "precious"


def test_every_file_a_command_writes_follows_the_umask(small_corpus, monkeypatch, capsys):
    """mkstemp and safetensors' own temp files are 0600: whatever gptcli writes (a run,
    its resume state and lock, an HF export, a tokenizer, a plot) gets 0666 & ~umask."""
    import os
    import stat

    from helpers import TINY_FLAGS, cli

    old = os.umask(0o027)
    try:
        for args in (["train", "corpus.txt", *TINY_FLAGS, "--max-steps", "2", "--out", "u"], ["export-hf", "u", "hf"],
                     ["train", "--resume", "u", "--max-steps", "3"], ["import-hf", "hf", "imp"],
                     ["tokenizer", "train", "corpus.txt", "--vocab-size", "280", "--out", "t.json"],
                     ["plot", "u", "--out", "c.png"]):
            code, _, err = cli(monkeypatch, capsys, *args)
            assert code == 0, err
    finally:
        os.umask(old)
    ws = small_corpus.parent
    written = [p for p in [*(ws / "hf").rglob("*"), *(ws / "u").rglob("*"), *(ws / "imp").rglob("*"),
                           *(ws / "tokenizer").rglob("*"), ws / "t.json", ws / "c.png"] if p.is_file()]
    modes = {str(p.relative_to(ws)): oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
    assert {k: v for k, v in modes.items() if v != "0o640"} == {}
