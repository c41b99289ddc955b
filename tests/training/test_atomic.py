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
