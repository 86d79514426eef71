"""Locked, atomic rewrites of a text file shared with other writers (bash scripts, people).

Every rewrite holds an exclusive flock on ``<file>.lock`` and replaces the file by a rename,
so readers never see a half-written file. New files (and their lock files) are 0600; an
existing file keeps its mode. ``statefile`` decides what the new text is. A log that only
grows (the events file) may instead be ``append``ed to in place, but only while it is
exactly as its writer left it (``Written``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vmlaunch.errors import ExitCode, HostError

NEW_FILE_MODE = 0o600


def read_text(path: Path) -> str | None:
    """The file's text; None when it does not exist."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def mode_for(path: Path) -> int:
    """The mode of a file we (re)write: the existing one's, else NEW_FILE_MODE."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return NEW_FILE_MODE


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    # A sidecar lock survives the atomic replace of the file itself; it is never deleted.
    # It takes the data file's mode, so whoever may write the file may also lock it.
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, mode_for(path))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


class InUse(HostError, OSError, exit_code=ExitCode.CANNOT_RUN):
    """Another live run holds the file's run lock."""


@contextlib.contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """Hold ``<file>.run-lock`` for a whole run, or raise InUse naming the holder's pid.

    The kernel drops it when the process dies (a SIGKILLed run leaves nothing to clean), and
    children do not inherit it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(f"{path}.run-lock", os.O_RDWR | os.O_CREAT, mode_for(path))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            raise InUse(f"{path} is in use by another run (pid {holder}); wait for it to end, "
                        "or give another --state-file") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the flock


class NotDurable(OSError):
    """The new text replaced the file (readers see it), but the directory's fsync failed: a
    crash may still bring the old file back."""


# fsync of a directory on a filesystem that cannot sync one (some FUSE and network mounts):
# the rename is as durable as that filesystem makes it, and no retry would do better.
CANNOT_SYNC_DIRECTORY = frozenset({errno.EINVAL, errno.ENOTSUP})


@dataclass(frozen=True)
class Written:
    """A file as its writer left it: while its inode, size and mtime are these, nobody else
    has written it (other writers replace it, append to it or truncate it)."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> Written:
        return cls(status.st_ino, status.st_size, status.st_mtime_ns)


def rewrite(path: Path, new_text: Callable[[str | None], str], *,
            durable: bool = True) -> Written:
    """Locked read-modify-write: ``new_text(current text or None)`` replaces the file.
    ``durable`` False skips the directory's fsync: a crash may bring the old file back, for
    a caller that keeps what it needs elsewhere (the state file, behind its events log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        return _atomic_write(path, new_text(read_text(path)), durable=durable)


def append(path: Path, left: Written, data: bytes, patch: tuple[int, bytes]) -> Written | None:
    """Locked, in place: ``data`` at the end and ``patch`` (offset, same-length bytes) over
    what is there, then fdatasync; None, writing nothing, unless the file is as ``left``.

    A short write is cut back (OSError); a failure after the append raises NotDurable: the
    bytes are in the file, only the header and their durability are in doubt. Killed during
    the write, the file may end mid-line: its reader drops such a tail
    (``statefile.without_torn_tail``)."""
    with locked(path):
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            if Written.of(os.fstat(fd)) != left:
                return None
            if (count := os.pwrite(fd, data, left.size)) != len(data):
                os.ftruncate(fd, left.size)
                raise OSError(errno.EIO, f"{path}: {count} of {len(data)} bytes appended")
            try:  # appended: from here a failure must not make the caller append again
                os.pwrite(fd, patch[1], patch[0])
                os.fdatasync(fd)
                return Written.of(os.fstat(fd))
            except OSError as exc:
                raise NotDurable(exc.errno, f"{exc.strerror}: appended to {path}, but its "
                                 "header or fsync failed") from exc
        finally:
            os.close(fd)


def check_writable(path: Path) -> None:
    """Raise OSError unless ``path`` could be atomically replaced; creates nothing."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if path.exists():
        with open(path, "a", encoding="utf-8"):  # opening to append changes nothing
            pass
    directory = path.parent
    while not directory.exists():  # the nearest directory a rewrite would create from
        directory = directory.parent
    fd, probe = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".probe")
    os.close(fd)
    os.unlink(probe)


def _atomic_write(path: Path, text: str, *, durable: bool) -> Written:
    mode = mode_for(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
            written = Written.of(os.fstat(f.fileno()))  # a rename keeps inode and mtime
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        sync_directory(path)  # make the rename itself durable
    return written


def sync_directory(path: Path) -> None:
    """fsync the directory of ``path``; NotDurable if that fails, opening it included."""
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        if exc.errno not in CANNOT_SYNC_DIRECTORY:
            raise NotDurable(exc.errno, f"{exc.strerror}: {path} was replaced, but its "
                             "directory's fsync failed") from exc
