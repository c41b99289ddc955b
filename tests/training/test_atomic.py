"""``atomic_write``: the old file or the whole new one, never a part; unique temporary names; nothing left behind."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
import torch

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


class FillingDisk:
    """A file on a disk that fills after ``room`` bytes: its writes then fail with ENOSPC, as a real full disk's do."""

    def __init__(self, f: Any, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.f, name)

    def __enter__(self) -> FillingDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def test_a_full_disk_inside_torch_save_names_the_file_the_reason_and_the_free_space_before_clean_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's C++ writer turns the file's ENOSPC into ``RuntimeError: [enforce fail at inline_container.cc]``; the
    error says what happened instead, with the free space measured while the partial file still took its room."""
    path = tmp_path / "last.pth"
    path.write_bytes(b"old")
    real_open = open
    monkeypatch.setattr(atomic, "open", lambda *a, **k: FillingDisk(real_open(*a, **k), 5000), raising=False)
    partial_present = []
    usage = shutil.disk_usage
    monkeypatch.setattr(
        atomic.shutil,
        "disk_usage",
        lambda folder: partial_present.append(len(list(tmp_path.glob("*.tmp")))) or usage(folder),
    )
    with pytest.raises(atomic.AtomicWriteError) as info, atomic_write(path) as f:
        torch.save({"weights": torch.zeros(100_000)}, f)
    message = str(info.value)
    assert re.search(rf"Could not write '{re.escape(str(path))}' \(No space left on device; \d+ MiB free", message)
    assert "inline_container" not in message and "previous last.pth (if any) is unchanged" in message
    assert info.value.errno == errno.ENOSPC
    assert partial_present == [1]  # measured before the temporary file was removed
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_errors_that_are_not_about_writing_pass_unchanged(tmp_path: Path) -> None:
    with pytest.raises(KeyError), atomic_write(tmp_path / "summary.json", "w") as f:
        f.write("{")
        raise KeyError("a bug in the caller")
    assert list(tmp_path.iterdir()) == []
