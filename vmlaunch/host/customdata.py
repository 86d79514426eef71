"""Custom-data files: the one place a VM's cloud-init content is written to disk.

`az vm create --custom-data` wants a file. Each process keeps those files in a private
directory, ``<tmp>/vmlaunch-<uid>/<pid>`` (both 0700, refused if someone else owns or can
write them), removed when the process ends: normally (atexit), or on a SIGTERM or SIGHUP
nobody else handles. A SIGKILL leaves the directory behind: ``prepare()``, called when a
command that creates VMs starts, sweeps the directories of processes that are gone.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import psutil

_made: set[Path] = set()  # this process's directories (one per temp dir it used)


def root() -> Path:
    """The directory holding one private directory per process of this user."""
    return Path(tempfile.gettempdir()) / f"vmlaunch-{os.getuid()}"


def _is_private(path: Path) -> bool:
    """A directory of this user that nobody else may write or read (lstat: a planted
    symlink does not count, it is never followed)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def _private_dir(path: Path) -> Path:
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    if not _is_private(path):
        raise PermissionError(f"{path} is not a private directory of this user; remove it")
    return path


def shared_dir(name: str) -> Path:
    """A private directory `name` under the root that every process of this user shares
    (`azslots` keeps its slot files there); `sweep` leaves it alone (not a pid)."""
    return _private_dir(_private_dir(root()) / name)


def own_dir() -> Path:
    """This process's directory, made on first use and removed at exit."""
    path = root() / str(os.getpid())
    if path not in _made or not path.is_dir():
        _private_dir(_private_dir(root()) / path.name)
        os.utime(path)  # newer than our start: never taken for a dead namesake's (`_stale`)
        if not _made:
            atexit.register(remove_own_dir)
        _made.add(path)
    return path


def remove_own_dir() -> None:
    for path in _made:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def custom_data_file(content: str | None) -> Iterator[str | None]:
    """A 0600 file holding ``content`` for as long as the block runs (None: no file)."""
    if content is None:
        yield None
        return
    fd, path = tempfile.mkstemp(dir=own_dir(), prefix="custom-data-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(content)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def sweep() -> list[Path]:
    """Remove the directories of processes that no longer run; the ones removed. Only in
    our private root: one planted under its predictable name (a symlink to our own files,
    a directory others may write) is never entered."""
    swept = []
    for entry in root().iterdir() if _is_private(root()) else ():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and _stale(entry):
            shutil.rmtree(entry, ignore_errors=True)
            swept.append(entry)
    return swept


def _stale(entry: Path) -> bool:
    try:
        started = psutil.Process(int(entry.name)).create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
    return started > entry.stat().st_mtime + 1  # the pid now belongs to a younger process


def prepare() -> None:
    """At the start of a command that creates VMs: sweep, and clean up on SIGTERM/SIGHUP.

    Handlers are only installed where the signal still has its default action: a command
    that handles it (asyncio's graceful stop) ends normally, and atexit cleans up."""
    sweep()
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _remove_and_die)


def _remove_and_die(signum: int, frame: FrameType | None) -> None:
    remove_own_dir()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)  # die of the signal, as without this handler
