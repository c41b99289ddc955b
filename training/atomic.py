"""Atomic file writes: a reader (or a resume after a crash) sees the old file or the whole new one, never a part.

``atomic_write(path)`` opens a temporary file beside ``path`` under a unique name, and when the ``with`` block
succeeds flushes it, syncs it to disk, renames it over ``path`` and syncs the folder. If anything fails (a full
disk, an exception in the block) the temporary file is removed and ``path`` is left as it was. A failure to write
(an ``OSError``, also one that ``torch.save``'s C++ writer reports as ``RuntimeError: [enforce fail at
inline_container.cc] ... unexpected pos``) becomes an ``AtomicWriteError`` naming the file, the reason and the free
space of its file system, measured before the temporary file is removed (afterwards it would hide a full disk).

Used for every file a run writes that a later run or tool reads: checkpoints, ``metrics.csv``/``metrics.jsonl``,
``summary.json``/``eval.json`` (``train.py``) and the Pathfinder cache (``training/pathfinder.py``).

The temporary name carries the host, the process id and a random token, so writers on several nodes of a shared
file system never collide. It is created with ``O_EXCL`` and mode ``0o666`` less the umask, the permissions any
other new file of the run gets (``tempfile.mkstemp`` would leave the file readable by its owner only).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["TMP_SUFFIX", "AtomicWriteError", "atomic_write", "remove_stale_temporaries"]

TMP_SUFFIX = ".tmp"  # temporary files are ``<name>.<host>.<pid>.<token>.tmp`` in the target's folder


def _fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable; a file system that cannot sync a folder is skipped."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicWriteError(OSError):
    """A file ``atomic_write`` could not write: the path, the reason and the free space when it failed. The previous
    file (if any) is unchanged and the temporary file removed."""


def _write_failure(err: BaseException) -> OSError | None:
    """The ``OSError`` behind a failed write: ``err`` itself, or the one ``torch.save``'s C++ writer swallowed (it
    raises ``RuntimeError: [enforce fail at inline_container.cc] ... unexpected pos`` with the ``OSError`` of the
    Python file as context). None for errors that are not about writing (a bug in the ``with`` block)."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    if isinstance(err, RuntimeError) and "inline_container" in str(err):
        return OSError(f"torch.save's writer stopped: {str(err).splitlines()[0]}")
    return None


def _free_space(folder: str) -> str:
    try:
        return f"{shutil.disk_usage(folder).free / 2**20:.0f} MiB free on its file system when the write failed"
    except OSError:
        return "free space unknown"


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """``with atomic_write(path, "w", newline="") as f: ...``: ``f`` is a new temporary file beside ``path``
    (``mode`` must be a write mode: ``"wb"`` or ``"w"``; ``open_kwargs`` go to ``open``); it replaces ``path``
    only when the block ends without an exception."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}.")
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    host = socket.gethostname()[:32]
    tmp = os.path.join(folder, f"{name}.{host}.{os.getpid()}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a power cut cannot leave an empty file under ``path``
        os.replace(tmp, path)
    except BaseException as err:
        failure = _write_failure(err) if isinstance(err, Exception) else None
        free = _free_space(folder) if failure is not None else ""  # before the removal frees the partial file
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if failure is None or isinstance(err, AtomicWriteError):
            raise
        reason = failure.strerror or str(failure) or type(failure).__name__
        error = AtomicWriteError(
            f"Could not write {path!r} ({reason}; {free}). Its temporary file was removed and the previous "
            f"{name} (if any) is unchanged. Free space in {folder!r} (or make it writable) and write it again."
        )
        error.errno = failure.errno  # ENOSPC, EACCES...: for callers that tell them apart
        raise error from err
    _fsync_folder(folder)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the temporary files ``atomic_write`` left in ``folder`` when its process was killed mid-write (it cannot
    remove its own then, and every write uses a new name, so nothing overwrites them): each can be as large as a
    checkpoint. Only for a folder no other process is writing into; returns the names removed."""
    pattern = re.compile(rf".+\.[^/]+\.\d+\.[0-9a-f]{{12}}{re.escape(TMP_SUFFIX)}")
    removed = []
    for entry in os.scandir(folder) if os.path.isdir(folder) else []:
        if entry.is_file() and pattern.fullmatch(entry.name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)
                removed.append(entry.name)
    return removed
