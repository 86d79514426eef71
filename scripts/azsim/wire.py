"""The fork server's protocol, shared by the clients (azsim/client.py, and azsim/client.c,
which mirrors `server_name` and `request` in C) and azsim/server.py. Standard library C
modules only: client.py imports this (and nothing else of the package) and must start in a
few ms.

The client connects to the abstract socket `server_name()`, checks that its peer is of the
same user, sends a 4-byte big-endian length with its fds 0, 1, 2 as SCM_RIGHTS, then that
many bytes of `request`: its working directory, the number of arguments, the arguments and
the environment's `NAME=value` entries, each ended by a NUL (none of them can hold one).
The child answers ACCEPTED once it holds the request (before that a client may safely run
the call itself), then one byte more, the exit code.
"""

import _socket
import os
import sys

ACCEPTED = b"\x01"  # the child has the request: it runs the call, whatever happens next
SIZE_BYTES = 4
_FNV_OFFSET, _FNV_PRIME, _MASK = 0xCBF29CE484222325, 0x100000001B3, (1 << 64) - 1


def peer_uid(sock: "_socket.socket") -> int:
    """The uid of the process at the other end (the abstract socket has no permissions)."""
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # pid, uid, gid
    return int.from_bytes(creds[4:8], sys.byteorder)


def _fnv1a(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


def server_name(code_dir: str) -> str:
    """The server's socket: one per user, version of the simulator in `code_dir` (scripts/:
    the names, mtimes and sizes of azsim/*.py, so an edited simulator gets a new server and
    the old one idles out), niceness and session (a child runs as nice as its server, and
    its CPU counts in that server's session, which its first client started)."""
    stamp = os.fsencode(code_dir)
    azsim = os.path.join(code_dir, "azsim")
    for name in sorted(e.name for e in os.scandir(azsim) if e.name.endswith(".py")):
        st = os.stat(os.path.join(azsim, name))
        stamp += os.fsencode(f"/{name} {st.st_mtime_ns} {st.st_size}")
    return f"az-sim-{os.getuid()}-{os.nice(0)}-{os.getsid(0)}-{_fnv1a(stamp):016x}"


def request(argv: list[str], environ: dict[bytes, bytes], cwd: bytes) -> bytes:
    fields = [cwd, b"%d" % len(argv), *map(os.fsencode, argv),
              *(b"%s=%s" % item for item in environ.items())]
    return b"".join(field + b"\0" for field in fields)


def parse_request(payload: bytes) -> tuple[list[str], dict[bytes, bytes], bytes]:
    """(argv, environment, working directory); ValueError if `payload` is no request."""
    if not payload.endswith(b"\0"):
        raise ValueError("a request ends with a NUL")
    cwd, count, *rest = payload[:-1].split(b"\0")  # ValueError if fewer than two fields
    if not count.isdigit() or int(count) > len(rest):
        raise ValueError("a request's argument count is wrong")
    argv, environ = rest[:int(count)], {}
    for entry in rest[int(count):]:
        name, equals, value = entry.partition(b"=")
        if equals:
            environ.setdefault(name, value)  # the first of two, as os.environ keeps it
    return [os.fsdecode(arg) for arg in argv], environ, cwd
