"""The az simulator's fork server: `scripts/az-sim` (azsim/client.c or client.py) is a thin
client of it (`python -P -m azsim.server NAME`, started by the first client that finds none).

A simulated call used to be a whole Python start-up plus the imports of argparse, yaml,
jmespath and this package (~30 ms of CPU before any work, ~60 ms at 500 VMs with the
work), where the tool's own cost is what the fleet benchmark measures. This server imports
all of that once and forks one child per call. The child takes over the client's
stdin/stdout/stderr (passed over the socket), its argv, environment and working directory,
runs `main` exactly as `scripts/az-sim` did, and sends the exit code back. The client is
the `az` process as the tool sees it: it lives for the call, prints through the same
descriptors and exits with the call's code.

Nothing is kept between calls: the state stays in its file (state.py), so the server can
be killed at any moment and the next client starts a new one. A child dies with its
client (a killed `az` does nothing more). A server serves one user, one version of the
code and one niceness (the client names it so: a child runs as nice as the server that
forked it), on an abstract socket that only that uid may use; it exits when idle. The
protocol is in wire.py.
"""

from __future__ import annotations

import contextlib
import gc
import os
import select
import signal
import socket
import sys
import threading
import traceback
from collections.abc import Callable

from . import state
from .wire import ACCEPTED, SIZE_BYTES, parse_request, peer_uid

IDLE_SECONDS = 30.0  # a server with no call for this long exits
CODE_DIR = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # scripts/
Main = Callable[[list[str]], int]


def _receive(conn: socket.socket) -> tuple[list[str], dict[bytes, bytes], bytes]:
    head, fds, _, _ = socket.recv_fds(conn, SIZE_BYTES, 3)
    if len(head) != SIZE_BYTES or len(fds) != 3:
        raise ConnectionError("a client sent no request")
    size, payload = int.from_bytes(head, "big"), b""
    while len(payload) < size:
        chunk = conn.recv(size - len(payload))
        if not chunk:
            raise ConnectionError("the client left mid-request")
        payload += chunk
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    return parse_request(payload)


def _take_over(argv: list[str], env: dict[bytes, bytes], cwd: bytes) -> None:
    """Become the client's process as far as the command can tell."""
    os.environb.clear()
    os.environb.update(env)
    os.chdir(cwd)
    sys.argv = [os.path.join(CODE_DIR, "az-sim"), *argv]


def _exit_with(conn: socket.socket) -> None:
    """The client is gone (killed, or done): so is this call, as a killed `az` would be."""
    with contextlib.suppress(OSError):
        conn.recv(1)
    os._exit(1)


def _unless_gone(conn: socket.socket) -> Callable[[], None]:
    """state.before_commit for this call: a client that is gone (its end of the socket is
    readable: it sends nothing after the request) commits nothing more."""
    def check() -> None:
        if select.select([conn], [], [], 0)[0]:
            os._exit(1)
    return check


def _call(conn: socket.socket, main: Main) -> int:
    """The call's exit code, as a Python process running `main` would end."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    conn.settimeout(None)
    request = _receive(conn)
    _take_over(*request)
    state.before_commit = _unless_gone(conn)
    conn.sendall(ACCEPTED)
    threading.Thread(target=_exit_with, args=(conn,), daemon=True).start()
    try:
        code = main(request[0])
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # as an uncaught exception ends a Python program: exit 1
        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
    except OSError as e:  # what Python does when stdout cannot be flushed at exit
        print(f"Exception ignored in: {sys.stdout!r}\n{type(e).__name__}: {e}",
              file=sys.stderr)
        code = 120
    return code


def _child(conn: socket.socket, main: Main) -> None:
    """Run one call in a forked child; never returns."""
    try:
        code = _call(conn, main)
    except BaseException:  # no request, or none taken: no answer (the call did not run)
        os._exit(1)
    with contextlib.suppress(BaseException):
        sys.stderr.flush()
        conn.sendall(bytes([code & 0xFF]))
    os._exit(0)


def serve(listener: socket.socket, main: Main) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    listener.settimeout(IDLE_SECONDS)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            return
        if peer_uid(conn) != os.getuid():
            conn.close()
            continue
        if os.fork() == 0:
            listener.close()
            _child(conn, main)
        conn.close()


def run(name: str) -> int:
    """Serve on the abstract socket `name`; exit 0 at once if another server has it."""
    # The first client's descriptors other than 0-2 are not ours to hold (a pipe held
    # here would never see its end of file).
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(f"\0{name}")
    except OSError:
        return 0  # another client started one first: that one serves
    listener.listen(512)
    os.chdir("/")
    # Imported once here, after the bind (a server that loses the race spares itself),
    # and never again in a child: jmespath and yaml are only imported on use there.
    import jmespath  # noqa: F401
    import yaml  # noqa: F401

    from .main import build_parsers, main
    build_parsers()
    # No garbage collection in a child: a call lives for milliseconds and its garbage has
    # no cycles to speak of, and a collection writes to the header of every object it
    # visits, each write a copy of a page shared with us. Frozen, our objects are never
    # visited anyway. With this and query.py's closures, a 500-VM listing's child takes ~40
    # ms of CPU instead of ~57, with ~2,900 page faults instead of ~3,100; a `vm show`'s
    # ~6 ms instead of ~11.
    gc.freeze()
    gc.disable()
    serve(listener, main)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
