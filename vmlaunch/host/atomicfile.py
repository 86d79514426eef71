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
    """A file as its writer left it: while its inode, size, mtime and ctime are these,
    nobody else has written it (ctime cannot be set back, as mtime can by `touch -r`)."""

    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> Written:
        return cls(status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)


def rewrite(path: Path, new_text: Callable[[str | None], str], *,
            durable: bool = True) -> Written | None:
    """Locked read-modify-write: ``new_text(current text or None)`` replaces the file; how
    it was left (None if another writer replaced it at once). ``durable`` False skips the
    directory's fsync: a crash may bring the old file back, for a caller that keeps what it
    needs elsewhere (the state file, behind its events log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path):
        inode = _atomic_write(path, new_text(read_text(path)), durable=durable)
        with contextlib.suppress(FileNotFoundError):
            left = Written.of(os.stat(path))  # after the rename, which sets the ctime
            return left if left.inode == inode else None
        return None


def append(path: Path, left: Written, data: bytes,
           patch: tuple[int, bytes]) -> tuple[bool, Written | None]:
    """Locked, in place: ``patch`` (offset, same-length bytes) over what is there, then
    ``data`` at the end, then fdatasync. (False, None), writing nothing, unless the file is
    as ``left``; else (True, how we left it), None there if another writer appended at the
    same moment: the end is the kernel's (RWF_APPEND), so a script's unlocked ``>>`` is not
    overwritten, it lands before or after ours.

    A failure before the append is an OSError (a short write is cut back first); after it,
    NotDurable: the bytes are in the file, only their durability is in doubt. A kill can cut
    the write short only between two pages (the kernel checks for it per page): the last
    line may end cut, which the reader comments out (``logtail.without_torn_tail``)."""
    with locked(path):
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            if Written.of(os.fstat(fd)) != left:
                return False, None
            if os.pwrite(fd, patch[1], patch[0]) != len(patch[1]):
                raise OSError(errno.EIO, f"{path}: its header could not be rewritten")
            if (count := os.pwritev(fd, [data], -1, os.RWF_APPEND)) != len(data):
                os.ftruncate(fd, os.fstat(fd).st_size - count)
                raise OSError(errno.EIO, f"{path}: {count} of {len(data)} bytes appended")
            try:  # appended: from here a failure must not make the caller append again
                os.fdatasync(fd)
                now = Written.of(os.fstat(fd))
            except OSError as exc:
                raise NotDurable(exc.errno, f"{exc.strerror}: appended to {path}, but its "
                                 "fsync failed") from exc
            return True, now if now.size == left.size + len(data) else None
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


def _atomic_write(path: Path, text: str, *, durable: bool) -> int:
    """Replace the file by a fsynced rename; the new file's inode."""
    mode = mode_for(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
            inode = os.fstat(f.fileno()).st_ino
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        sync_directory(path)  # make the rename itself durable
    return inode


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
