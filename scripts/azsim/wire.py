"""The fork server's protocol, shared by scripts/az-sim and azsim/server.py. Standard
library C modules only: the client imports this (and nothing else of the package) and must
start in a few ms.

The client connects, sends a 4-byte big-endian length with its fds 0, 1, 2 as SCM_RIGHTS,
then that many bytes of `marshal.dumps((argv, env, cwd))`; the child answers ACCEPTED once
it holds the request (before that a client may safely run the call itself), then one byte
more, the exit code.
"""

import _socket
import sys

ACCEPTED = b"\x01"  # the child has the request: it runs the call, whatever happens next
SIZE_BYTES = 4


def peer_uid(sock: "_socket.socket") -> int:
    """The uid of the process at the other end (the abstract socket has no permissions)."""
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)  # pid, uid, gid
    return int.from_bytes(creds[4:8], sys.byteorder)
