"""Self-tests of the simulator's fork server (scripts/azsim/server.py): `scripts/az-sim` is a
thin client whose call runs in a child of a long-lived server. Real processes and signals;
the server is the one every test of this checkout shares, except where a test needs one of
its own (a copy of scripts/ is another code directory, hence another server).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import psutil
import pytest
from conftest import REPO
from test_az_sim import AZ_SIM, RG, Sim, sim_fixture, wait_for  # noqa: F401 (`sim`)

sys.path.insert(0, str(REPO / "scripts"))
from azsim import wire

pytestmark = pytest.mark.timeout(60)


def servers(code_dir: Path) -> list[psutil.Process]:
    """Live fork servers listening for the simulator in `code_dir`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ"]):
        cmd, env = proc.info["cmdline"] or [], proc.info["environ"] or {}
        if cmd[-3:-1] == ["-m", "azsim.server"] and env.get("PYTHONPATH") == str(code_dir):
            found.append(proc)
    return found


def calls_in(cwd: Path) -> list[psutil.Process]:
    """The server's children running a call whose client works in `cwd` (a child takes
    over its client's working directory, and no other test uses this one)."""
    found = []
    for server in servers(REPO / "scripts"):
        try:
            children = server.children()
        except psutil.Error:  # a server idling out meanwhile
            continue
        for child in children:
            try:
                if child.cwd() == str(cwd):
                    found.append(child)
            except psutil.Error:
                continue
    return found


NATIVE = REPO / "scripts" / ".build" / "az-sim"  # scripts/build-az-sim.sh builds it


def python_client(scripts: Path) -> list[str]:
    return ["python3", "-I", "-S", str(scripts / "azsim" / "client.py")]


def run_in(sim: Sim, cwd: Path, *args: str, az: list[str] | None = None,
           **env: str) -> subprocess.CompletedProcess:
    """A call through scripts/az-sim (or the client `az`) in `cwd`."""
    return subprocess.run([*(az or [str(AZ_SIM)]), *args], env={**sim.env, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=30)


def native_built() -> None:
    """Skip unless the native client is built from the current source (CI builds it)."""
    source = REPO / "scripts" / "azsim" / "client.c"
    if not NATIVE.exists() or NATIVE.stat().st_mtime_ns < source.stat().st_mtime_ns:
        pytest.skip("scripts/.build/az-sim is not built from the current client.c "
                    "(no C compiler?): scripts/build-az-sim.sh builds it")


def own_copy(tmp_path: Path) -> Path:
    """A copy of scripts/: another version of the simulator, so a server of its own."""
    copy = tmp_path / "scripts"
    shutil.copytree(REPO / "scripts", copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def client(scripts: Path) -> ModuleType:
    """The Python client, azsim/client.py, as a module (it runs a call only as __main__)."""
    loader = importlib.machinery.SourceFileLoader("az_sim_client",
                                                  str(scripts / "azsim" / "client.py"))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(module)
    return module


def stop(procs: list[psutil.Process]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)


# ---------------------------------------------------------------- same call, same answer


CALLS = [
    ("version",),
    ("vm", "show", "-g", RG, "-n", "absent"),  # ResourceNotFound, exit 3
    ("vm", "list", "-g", RG, "--query", "[?"),  # a bad query: usage error, exit 2
    ("vm", "create", "-g", RG),  # a missing required argument, exit 2
    ("vm", "list", "-g", RG, "--query", "[].name", "-o", "tsv"),
    ("vm", "bogus"),
]


@pytest.mark.parametrize("args", CALLS, ids=[" ".join(c[:3]) for c in CALLS])
@pytest.mark.parametrize("az", ["entry", "python"])
def test_a_call_through_the_server_prints_and_exits_as_one_without(sim, tmp_path, args, az):
    """Through scripts/az-sim (the native client once built) and the Python client."""
    assert sim.create("a").returncode == 0
    served = run_in(sim, tmp_path, *args, az=python_client(REPO / "scripts")
                    if az == "python" else None)
    alone = run_in(sim, tmp_path, *args, AZ_SIM_SERVER="0")
    assert (served.returncode, served.stdout, served.stderr) == (
        alone.returncode, alone.stdout, alone.stderr)
    assert servers(REPO / "scripts"), "no fork server ran the call"


def test_the_call_gets_the_clients_directory_and_environment(sim, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "key.pub").write_text("ssh-ed25519 AAAAC3Nza relative@key\n")
    (tmp_path / "other").mkdir()
    other = Sim(tmp_path / "other")  # another state file, through the same server
    created = run_in(sim, work, "vm", "create", "-g", RG, "-n", "k", "--image", "Ubuntu2204",
                     "--ssh-key-values", "key.pub")
    assert created.returncode == 0, created.stderr
    assert other.create("elsewhere").returncode == 0
    vms = sim.state()["vms"]
    assert vms["k"]["ssh_keys"] == ["ssh-ed25519 AAAAC3Nza relative@key"]
    assert "elsewhere" not in vms and list(other.state()["vms"]) == ["elsewhere"]


def test_a_killed_client_ends_its_call_in_the_server(sim, tmp_path):
    """...and the call ran as nice as its client (the tool runs `az` at niceness 19)."""
    sim.scenario(defaults={"create_seconds": 100_000})  # a blocking create for 1,000 s
    assert sim.run("version").returncode == 0  # a server runs (not started by a nice client)
    create = [str(AZ_SIM), "vm", "create", "-g", RG, "-n", "slow", "--image", "Ubuntu2204"]
    client = subprocess.Popen(["nice", "-n", "7", *create], env=sim.env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    call = wait_for(lambda: calls_in(tmp_path), what="the call in a child of the server")
    assert call[0].nice() == min(19, os.nice(0) + 7)
    wait_for(lambda: "slow" in sim.state()["vms"], what="the PUT")  # then the long wait
    client.kill()
    client.communicate(timeout=10)
    wait_for(lambda: not calls_in(tmp_path), what="the call to end with its client")
    assert sim.state()["vms"]["slow"]["ready_at"]  # the PUT was made: Azure goes on


def test_a_killed_server_is_replaced_by_the_next_call(sim, tmp_path):
    copy = own_copy(tmp_path)  # a server of this test's own: others keep theirs
    az = [str(copy / "az-sim"), "vm", "list", "-g", RG]
    assert subprocess.run(az, env=sim.env, capture_output=True, timeout=30).returncode == 0
    first = wait_for(lambda: servers(copy), what="a server for the copy")
    first[0].kill()
    wait_for(lambda: not servers(copy), what="the killed server to go")
    again = subprocess.run(az, env=sim.env, capture_output=True, text=True, timeout=30)
    assert (again.returncode, json.loads(again.stdout)) == (0, [])
    assert [p.pid for p in servers(copy)] != [first[0].pid]
    stop(servers(copy))


def test_a_server_holds_none_of_its_first_clients_other_descriptors(sim, tmp_path):
    """A pipe the client was given (a shell's, make's) reaches its end of file when the
    client exits: the server it started must not keep the pipe open."""
    copy = own_copy(tmp_path)
    read_end, write_end = os.pipe()
    try:
        started = subprocess.run([str(copy / "az-sim"), "version"], env=sim.env,
                                 capture_output=True, pass_fds=(write_end,), timeout=30)
        assert started.returncode == 0 and servers(copy)
        os.close(write_end)
        readable, _, _ = select.select([read_end], [], [], 10)
        assert readable and os.read(read_end, 1) == b""  # end of file: nobody holds it
    finally:
        os.close(read_end)
        stop(servers(copy))


def test_a_server_runs_in_its_first_clients_session_in_a_group_of_its_own(sim, tmp_path):
    """With the scheduler's autogroups a nice value counts only within a session: the
    simulated work of an `az` that a tool runs nice must stay in that tool's session (as a
    real `az` process would), yet a kill of the client's group must spare the server."""
    copy = own_copy(tmp_path)
    session = subprocess.Popen(  # a session of its own, as the tool's guard has
        [str(copy / "az-sim"), "version"], env=sim.env, stdout=subprocess.DEVNULL,
        start_new_session=True)
    try:
        assert session.wait(timeout=30) == 0
        server = wait_for(lambda: servers(copy), what="a server for the copy")[0]
        assert os.getsid(server.pid) == session.pid
        assert os.getpgid(server.pid) == server.pid
    finally:
        stop(servers(copy))


def test_each_session_has_its_server(sim, tmp_path):
    """A call's CPU counts in its caller's session, as a real `az` process's: two sessions'
    calls are served by two servers, each in its session."""
    copy = own_copy(tmp_path)
    sessions = [subprocess.Popen([str(copy / "az-sim"), "version"], env=sim.env,
                                 stdout=subprocess.DEVNULL, start_new_session=True)
                for _ in range(2)]
    try:
        assert [s.wait(timeout=30) for s in sessions] == [0, 0]
        found = wait_for(lambda: len(servers(copy)) == 2 and servers(copy),
                         what="a server for each session")
        assert sorted(os.getsid(p.pid) for p in found) == sorted(s.pid for s in sessions)
    finally:
        stop(servers(copy))


DRIVER = """import subprocess, sys
calls = [subprocess.Popen(sys.argv[2:], stdout=subprocess.DEVNULL) for _ in range(int(sys.argv[1]))]
sys.exit(max(call.wait() for call in calls))
"""


def test_calls_that_find_no_server_start_one_between_them(sim, tmp_path):
    """Many calls at once and no server yet (a tool's first calls): one of them starts the
    server and the others wait for it, instead of each starting one that then loses the
    race for the socket (~30 Python starts on the tool's 2 cores as its run begins)."""
    copy = own_copy(tmp_path)
    started = tmp_path / "servers-started"
    server = copy / "azsim" / "server.py"
    main = 'if __name__ == "__main__":'
    server.write_text(server.read_text().replace(  # a line per server process that starts
        main, f"open({str(started)!r}, 'a').write('started\\n')\n\n\n{main}"))
    calls = subprocess.run(  # in one session, as one tool's calls
        [sys.executable, "-c", DRIVER, "12", *python_client(copy), "version"], env=sim.env,
        start_new_session=True, timeout=60)
    try:
        assert calls.returncode == 0
        assert started.read_text().splitlines() == ["started"]
    finally:
        stop(servers(copy))


def test_a_call_waits_for_a_held_start_name_only_so_long_then_starts_a_server(sim, tmp_path):
    """The name of the one client that starts the server can be held by a starter that is
    stopped, or by another user: a call waits for its server a while (STARTER_WAIT), then
    starts one itself instead of running without a server after 10 s."""
    copy = own_copy(tmp_path)
    held = socket.socket(socket.AF_UNIX)
    held.bind("\0" + wire.server_name(str(copy)) + "-start")  # our session and niceness
    try:
        done = subprocess.run([*python_client(copy), "version"], env=sim.env,
                              capture_output=True, timeout=30)
        assert done.returncode == 0
        assert servers(copy), "the call ran without a server"
    finally:
        held.close()
        stop(servers(copy))


SQUATTER = """import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind("\\0" + sys.argv[1])
s.listen(8)
print("listening", flush=True)
while True:
    conn, _ = s.accept()
    if got := conn.recv(65536):
        print(f"got {len(got)} bytes", flush=True)
    conn.close()
"""


def test_a_server_of_another_user_is_never_handed_a_call(sim, tmp_path):
    """The socket's name is predictable: another user may take it before our server does.
    The client checks the server's uid and then runs the call itself."""
    if os.getuid() != 0:
        pytest.skip("a server of another user needs root to start")
    copy = own_copy(tmp_path)
    name = client(copy).server_name()  # ours: this uid, niceness and copy of the code
    squatter = subprocess.Popen(["/usr/bin/python3", "-I", "-c", SQUATTER, name], user=65534,
                                group=65534, stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout.readline() == "listening\n"
        listed = subprocess.run([str(copy / "az-sim"), "vm", "list", "-g", RG], env=sim.env,
                                capture_output=True, text=True, timeout=30)
        assert (listed.returncode, listed.stdout, listed.stderr) == (0, "[]\n", "")
        assert sim.state()["calls"].get("vm list") == 1  # it ran, without any server
        assert not servers(copy)
    finally:
        squatter.kill()
        out, _ = squatter.communicate(timeout=10)
    assert "got" not in out  # the squatter saw no byte of the request (argv, environment)


def test_another_user_gets_no_answer(sim, tmp_path):
    """The socket is abstract (no file permissions): the server checks the peer's uid."""
    if os.getuid() != 0:
        pytest.skip("switching to another user needs root")
    assert sim.run("version").returncode == 0  # the server is up
    name = servers(REPO / "scripts")[-1].cmdline()[-1]
    payload = wire.request(["vm", "list", "-g", RG], {os.fsencode(k): os.fsencode(v)
                                                       for k, v in sim.env.items()},
                           os.fsencode(tmp_path))
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"s.connect({chr(0) + name!r})\n"
        "try:\n"
        f"    socket.send_fds(s, [({len(payload)}).to_bytes(4, 'big')], [0, 1, 2])\n"
        f"    s.sendall({payload!r})\n"
        "except OSError:\n"
        "    pass  # closed before the request was all sent\n"
        "try:\n"
        "    print(repr(s.recv(1)))\n"
        "except ConnectionResetError:\n"
        "    print(repr(b''))  # closed with the request unread\n")
    # /root and the venv behind it are root's only: a system python runs the probe.
    seen = subprocess.run(["/usr/bin/python3", "-I", "-c", probe], capture_output=True, text=True,
                          timeout=30, user=65534, group=65534)
    assert (seen.returncode, seen.stdout.strip()) == (0, "b''"), seen.stderr
    assert "vm list" not in sim.state()["calls"]


@pytest.mark.parametrize("request_bytes", [b"", b"\x00\x00\x00\x05hello", b"\xff" * 4,
                                           b"\x00\x00\x00\x08" + b"\x00" * 8,
                                           b"\x00\x00\x00\x06/\x009\x00a\x00"],
                         ids=["nothing", "no-request", "huge-size", "wrong-shape", "wrong-count"])
def test_bytes_that_are_no_request_get_no_answer_and_the_server_keeps_serving(
        sim, tmp_path, request_bytes):
    """No answer at all: a client that gets none runs the call itself (it never ran)."""
    assert sim.run("version").returncode == 0
    name = client(REPO / "scripts").server_name()
    conn = socket.socket(socket.AF_UNIX)
    conn.connect(f"\0{name}")
    if request_bytes:
        socket.send_fds(conn, [request_bytes[:4]], [0, 1, 2])
        conn.sendall(request_bytes[4:])
    conn.shutdown(socket.SHUT_WR)
    conn.settimeout(10)
    assert conn.recv(4) == b""
    conn.close()
    assert sim.run("vm", "list", "-g", RG).returncode == 0
    assert sim.state()["calls"] == {"version": 1, "vm list": 1}


# ---------------------------------------------------------------- the native client


def test_the_entry_runs_the_native_client_only_when_built_from_the_current_source(sim, tmp_path):
    copy = own_copy(tmp_path)
    fake = copy / ".build" / "az-sim"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/bin/sh\necho "native $*"\n')
    fake.chmod(0o755)
    entry = [str(copy / "az-sim")]
    assert run_in(sim, tmp_path, "vm", "list", az=entry).stdout == "native vm list\n"
    later = fake.stat().st_mtime_ns + 10**9
    os.utime(copy / "azsim" / "client.c", ns=(later, later))  # edited after the build
    listed = run_in(sim, tmp_path, "vm", "list", "-g", RG, az=entry)
    assert (listed.returncode, listed.stdout) == (0, "[]\n")
    stop(servers(copy))


def test_a_call_is_the_native_client_process_itself(sim, tmp_path):
    """The `az` process the tool starts execs the native client (the tool's kill of it, and
    its process counts, reach the client)."""
    native_built()
    sim.scenario(defaults={"create_seconds": 100_000})  # a blocking create for 1,000 s
    create = subprocess.Popen([str(AZ_SIM), "vm", "create", "-g", RG, "-n", "slow",
                               "--image", "Ubuntu2204"], env=sim.env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: calls_in(tmp_path), what="the call in a child of the server")
        assert psutil.Process(create.pid).exe() == str(NATIVE)
    finally:
        create.kill()
        create.communicate(timeout=10)
    wait_for(lambda: not calls_in(tmp_path), what="the call to end with its client")


def test_both_clients_find_the_same_server(sim, tmp_path):
    """client.c names the server as wire.server_name does: a native call after the
    Python client started a server is served by that one, with no python3 to fall back on."""
    native_built()
    copy = own_copy(tmp_path)
    first = run_in(sim, tmp_path, "vm", "list", "-g", RG, az=python_client(copy))
    assert first.returncode == 0, first.stderr
    server = wait_for(lambda: servers(copy), what="a server for the copy")
    native = run_in(sim, tmp_path, "vm", "list", "-g", RG, az=[str(copy / ".build" / "az-sim")],
                    PATH="/nonexistent")
    assert (native.returncode, native.stdout, native.stderr) == (0, "[]\n", "")
    assert [p.pid for p in servers(copy)] == [p.pid for p in server]
    stop(servers(copy))


def test_the_native_client_starts_no_server_itself_and_logs_a_call_once(sim, tmp_path):
    """With no server it hands the call to the Python client, which starts one (and logs
    the call: neither logs it twice); its log line is the Python client's, byte for byte."""
    native_built()
    copy = own_copy(tmp_path)
    odd = os.fsdecode(b"x\xff\ny")  # not UTF-8, and a newline
    logs = {}
    for az in ([str(copy / ".build" / "az-sim")], python_client(copy)):
        logs[az[0]] = log = tmp_path / f"{len(logs)}.log"
        for _ in range(2):  # the first native one finds no server
            done = subprocess.run([*az, "vm", "show", "-g", RG, "-n", odd], capture_output=True,
                                  env={**sim.env, "AZ_SIM_CALL_LOG": str(log)}, timeout=30)
            assert done.returncode == 3, done.stderr
    assert len(servers(copy)) == 1
    lines = [[line.split(b" ", 1)[1] for line in log.read_bytes().splitlines()]
             for log in logs.values()]
    assert lines[0] == lines[1] == [b"vm show -g " + RG.encode() + b" -n x\xff\\ny"] * 2
    stop(servers(copy))


DEEP_CWD = """import os, sys
for _ in range(24):
    os.mkdir("d" * 200)
    os.chdir("d" * 200)
with open("scenario.json", "w") as f:
    f.write('{"logged_in": false}')
os.execvp(sys.argv[1], sys.argv[1:])
"""  # runs its arguments in a directory whose path is longer than PATH_MAX, made step by step


def test_a_call_from_a_directory_longer_than_path_max_runs_there(sim, tmp_path):
    """Relative paths (here the scenario's) are read from the caller's directory, however long."""
    native_built()
    for name, az in (("native", [str(NATIVE)]), ("python", python_client(REPO / "scripts"))):
        (tmp_path / name).mkdir()
        done = subprocess.run([sys.executable, "-c", DEEP_CWD, *az, "vm", "list"],
                              cwd=tmp_path / name, capture_output=True, text=True, timeout=30,
                              env={**sim.env, "AZ_SIM_SCENARIO": "scenario.json"})
        assert (done.returncode, done.stderr) == (
            1, "ERROR: Please run 'az login' to setup account.\n"), name


def signal_bit(pid: int, field: str, signum: int) -> bool:
    """Whether `signum` is in /proc/PID/status's SigIgn or SigCgt mask."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = next(int(line.split()[1], 16) for line in status.splitlines()
                if line.startswith(field + ":"))
    return bool(mask >> (signum - 1) & 1)


@pytest.mark.parametrize("ignored", [True, False], ids=["ignored", "default"])
def test_the_native_client_keeps_sigint_as_python_would(sim, tmp_path, ignored):
    """An ignored SIGINT (a background job of a script) stays ignored; else ^C ends the call
    with exit 130, as the Python client's KeyboardInterrupt."""
    native_built()
    sim.scenario(defaults={"create_seconds": 100_000})  # a blocking create for 1,000 s
    trap = "trap '' INT; " if ignored else ""
    create = subprocess.Popen(["sh", "-c", f'{trap}exec "$@"', "sh", str(AZ_SIM), "vm",
                               "create", "-g", RG, "-n", "slow", "--image", "Ubuntu2204"],
                              env=sim.env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        wait_for(lambda: calls_in(tmp_path), what="the call in a child of the server")
        assert psutil.Process(create.pid).exe() == str(NATIVE)
        assert signal_bit(create.pid, "SigIgn", signal.SIGINT) is ignored
        assert signal_bit(create.pid, "SigCgt", signal.SIGINT) is not ignored
        if not ignored:
            create.send_signal(signal.SIGINT)
            assert create.wait(timeout=10) == 130
    finally:
        create.kill()
        create.communicate(timeout=10)


def test_the_native_client_finds_its_directory_without_proc(sim, tmp_path):
    native_built()
    if os.getuid() != 0 or not shutil.which("unshare"):
        pytest.skip("hiding /proc needs root and unshare(1)")
    hidden = "mount -t tmpfs none /proc && exec \"$@\""
    done = subprocess.run(["unshare", "-m", "sh", "-c", hidden, "sh", str(AZ_SIM), "vm", "list",
                           "-g", RG], env=sim.env, capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr


def test_a_build_that_cannot_write_leaves_the_python_client_and_no_failure(tmp_path):
    if os.getuid() != 0 or not shutil.which("unshare"):
        pytest.skip("a read-only scripts/ for root needs a bind mount: root and unshare(1)")
    copy = own_copy(tmp_path)
    shutil.rmtree(copy / ".build", ignore_errors=True)
    read_only = f"mount --bind -o ro {copy} {copy} && bash {copy}/build-az-sim.sh"
    done = subprocess.run(["unshare", "-m", "sh", "-c", read_only], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "uses its Python client" in done.stderr and not (copy / ".build").exists()
