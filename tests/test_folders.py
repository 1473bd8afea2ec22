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
