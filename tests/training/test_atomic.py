"""``atomic_write``: the old file or the whole new one, never a part; unique temporary names; nothing left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mixerzoo.training import atomic
from mixerzoo.training.atomic import atomic_write


def test_a_write_replaces_the_file_synced_with_the_usual_permissions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "summary.json"
    path.write_text("old")
    synced = []
    fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: synced.append(fd) or fsync(fd))
    old_umask = os.umask(0o022)
    try:
        with atomic_write(path, "w") as f:
            f.write("new")
            assert path.read_text() == "old"  # nothing visible before the block ends
    finally:
        os.umask(old_umask)
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    assert len(synced) == 2  # the file before its rename, then the folder
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0o600


def test_a_failed_write_removes_its_temporary_file_and_keeps_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "last.pth"
    path.write_bytes(b"old")
    with pytest.raises(OSError, match="No space left"), atomic_write(path) as f:
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_concurrent_writers_of_one_file_use_their_own_temporary_files(tmp_path: Path) -> None:
    """Two writers at once (two jobs, or two nodes on a shared file system): neither clobbers the other's partial
    file, and the file ends whole, as the last one to finish wrote it."""
    path = tmp_path / "cache.npy"
    with atomic_write(path) as first, atomic_write(path) as second:
        assert len(list(tmp_path.glob(f"cache.npy.*{atomic.TMP_SUFFIX}"))) == 2
        first.write(b"first")
        second.write(b"second")
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["cache.npy"]


def test_temporaries_of_killed_writers_are_removed_and_nothing_else(tmp_path: Path) -> None:
    """A process killed inside atomic_write leaves its temporary file; the next run's start removes such files only."""
    keep = ["last.pth", "notes.tmp", "metrics.csv", "last.pth.host.12.nothex.tmp"]
    stale = ["last.pth.node-1.example.org.4242.0123456789ab.tmp", "step_00000010.pth.h.7.abcdef012345.tmp"]
    for name in keep + stale:
        (tmp_path / name).write_bytes(b"x")
    assert sorted(atomic.remove_stale_temporaries(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
    assert atomic.remove_stale_temporaries(tmp_path / "missing") == []


def test_the_names_atomic_write_uses_are_the_ones_removed(tmp_path: Path) -> None:
    with atomic_write(tmp_path / "last.pth") as f:
        f.write(b"weights")
        (temporary,) = [p.name for p in tmp_path.iterdir() if p.name != "last.pth"]
    (tmp_path / temporary).write_bytes(b"half")  # as if its writer had been killed before the rename
    assert atomic.remove_stale_temporaries(tmp_path) == [temporary]
    assert (tmp_path / "last.pth").read_bytes() == b"weights"
