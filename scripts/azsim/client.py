"""The simulator's Python client: what scripts/az-sim (use its path as AZ_CLI) runs as
`python3 -I -S azsim/client.py ARGS` when the native client (client.c) is not built, and
what the native client hands every call it does not serve itself. See docs/az-simulator.md.

A thin client: the call runs in a child of the simulator's fork server (azsim/server.py),
which this starts when there is none, and this process prints what the call prints (the
child writes to our own stdout/stderr) and exits with its code. Standard library only and
no `site`, so that it starts in ~10-15 ms. AZ_SIM_SERVER=0 (or no server to be had) runs the
call without one.
"""

import _socket
import os
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))  # scripts/
sys.path.insert(0, HERE)
from azsim.wire import ACCEPTED, SIZE_BYTES, peer_uid, request  # noqa: E402 (stdlib only)
from azsim.wire import server_name as wire_server_name  # noqa: E402

VENV_PYTHON = os.path.join(HERE, "..", ".venv", "bin", "python")
# The simulator needs pyyaml and jmespath: the repo's venv has them (sys.executable may not).
PYTHON = VENV_PYTHON if os.path.exists(VENV_PYTHON) else sys.executable
START_SECONDS = 10.0  # for a new server to listen, before the call runs without one
STARTER_WAIT = 2.0  # for the server another client starts, before starting one ourselves


def server_name() -> str:
    return wire_server_name(HERE)


def direct() -> None:
    """Run the call in a process of its own, as before there was a server."""
    env = {**os.environ, "PYTHONPATH": HERE}
    os.execve(PYTHON, [PYTHON, "-P", "-m", "azsim", *sys.argv[1:]], env)


def start_server(name: str) -> int:
    """A server in a process group of its own (a kill of our group spares it) but in our
    session: with the scheduler's autogroups a nice value counts only within a session, and
    the work of `az` run nice by a tool must stay nice next to that tool's other work, as
    in a real `az` process."""
    env = {"PATH": os.environ.get("PATH", os.defpath), "PYTHONPATH": HERE,
           "PYTHONDONTWRITEBYTECODE": "1"}
    null = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    return os.posix_spawn(PYTHON, [PYTHON, "-P", "-m", "azsim.server", name], env,
                          setpgroup=0, file_actions=null)


def connect() -> "_socket.socket | None":
    """A connection to our server, started if need be; None if none would listen."""
    sock, name = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM), server_name()
    starter = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)  # see `starts`
    servers: list[int] = []  # the ones we started: a second if the first lost a race
    began = time.monotonic()
    deadline = began + START_SECONDS
    try:
        while time.monotonic() < deadline:
            try:
                sock.connect(f"\0{name}")
                if peer_uid(sock) == os.getuid():
                    return sock
                break  # another user's (the name is predictable): never hand them our call
            except OSError:
                if (not servers or os.waitpid(servers[-1], os.WNOHANG)[0]) and starts(
                        starter, name, began):
                    if len(servers) == 2:
                        break  # ours keep ending without listening: run the call ourselves
                    servers.append(start_server(name))
                time.sleep(0.005)
    finally:
        starter.close()
    sock.close()
    return None


def starts(starter: "_socket.socket", name: str, since: float) -> bool:
    """Whether this client is the one to start the server (asked since `since`, each time
    no server listened): the one whose `starter` holds the abstract name `<name>-start`
    (the kernel frees it when its holder ends, even killed). The others wait for the server
    it starts rather than each starting one, but for STARTER_WAIT at most: a holder that is
    stopped, or another user's process on the name, must not hold every call back."""
    if starter.getsockname():
        return True  # ours since the last try, and no server listened then either
    try:
        starter.bind(f"\0{name}-start")
    except OSError:
        return time.monotonic() - since >= STARTER_WAIT
    return False  # ours now: one more try first (its last holder's server may listen now)


def fill_standard_fds() -> None:
    """/dev/null where fd 0, 1 or 2 is closed, before any other fd takes its number."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.dup2(os.open(os.devnull, os.O_RDWR), fd)


def this_request() -> bytes:
    try:
        cwd = os.getcwdb()
    except OSError:  # removed under us: the call can still run, paths it reads may not
        cwd = b"/"
    return request(sys.argv[1:], dict(os.environb), cwd)


def call(sock: "_socket.socket") -> int | None:
    """The call's exit code; None if the server never took the call (it was exiting)."""
    payload = this_request()
    fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
    try:
        sock.sendmsg([len(payload).to_bytes(SIZE_BYTES, "big")],
                     [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
        sock.sendall(payload)
        if sock.recv(1) != ACCEPTED:
            return None
    except OSError:
        return None
    try:
        code = sock.recv(1)
    except OSError:
        code = b""
    if not code:
        sys.stderr.write("ERROR: az-sim: the simulator's server ended the call early\n")
        return 1
    return code[0]


def log_call() -> None:
    """With AZ_SIM_CALL_LOG set, append `<epoch seconds> <argv>` to that file, one line (a
    newline in an argument is written as `\\n`): the fleet benchmark times calls this way (a
    logging wrapper script cost ~8 ms of CPU a call). A log that cannot be written is a
    warning: the call itself runs as it would without one."""
    path = os.environ.get("AZ_SIM_CALL_LOG")
    if not path:
        return
    argv = b" ".join(os.fsencode(arg).replace(b"\n", b"\\n") for arg in sys.argv[1:])
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, b"%.6f %s\n" % (time.time(), argv))
        finally:
            os.close(fd)
    except OSError as exc:
        sys.stderr.write(f"WARNING: az-sim: cannot write AZ_SIM_CALL_LOG {path}: "
                         f"{exc.strerror}\n")


def main() -> int:
    fill_standard_fds()
    log_call()
    if os.environ.get("AZ_SIM_SERVER") != "0" and (sock := connect()) is not None:
        code = call(sock)
        if code is not None:
            return code
    direct()
    return 127  # not reached: direct() replaces this process


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
