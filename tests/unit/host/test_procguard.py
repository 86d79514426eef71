"""procguard: the whole process group goes, with SIGKILL escalation, even after the direct
child has exited; long-lived children (`spawn_child`/`stop_child`) go with their session
and with us. Real processes and signals; a grandchild that ignores SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import PYTHON, REPO, wait_until

from vmlaunch.host.procs import COMMAND_NICENESS, run_process, spawn_child, stop_child

pytestmark = pytest.mark.timeout(60)

GRACE = 1.0
# Ignores SIGTERM (inherited by nothing else), then says it is ready by writing its pid.
STUBBORN = ("import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "open(sys.argv[1] + '.tmp', 'w').write(str(os.getpid())); "
            "os.rename(sys.argv[1] + '.tmp', sys.argv[1]); time.sleep(60)")


def stubborn_grandchild(pidfile: Path, *, then: str) -> list[str]:
    """A shell (the direct child) that starts the stubborn grandchild, then runs `then`."""
    return ["sh", "-c", f'"$0" -c "$1" "$2" & {then}', PYTHON, STUBBORN, str(pidfile)]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def read_pid(pidfile: Path) -> int:
    return int(wait_until(lambda: pidfile.exists() and pidfile.read_text(), timeout=10,
                          message="the grandchild to start"))


def test_a_sigkilled_parent_takes_a_grandchild_that_ignores_sigterm_with_it(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    parent_code = (
        "import asyncio, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from vmlaunch.host.procs import run_process\n"
        "async def main():\n"
        f"    await run_process(sys.argv[1:], kill_grace={GRACE})\n"
        "asyncio.run(main())\n")
    parent = subprocess.Popen([PYTHON, "-c", parent_code,
                               *stubborn_grandchild(pidfile, then="wait")])
    try:
        grandchild = read_pid(pidfile)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        # The guard's SIGTERM ends the shell at once; the grandchild must still go.
        wait_until(lambda: gone(grandchild), timeout=GRACE + 2,
                   message="the stubborn grandchild to be killed")
    finally:
        parent.kill()
        if pidfile.exists() and not gone(pid := int(pidfile.read_text())):
            os.kill(pid, signal.SIGKILL)


async def test_a_grandchild_left_behind_by_an_exited_child_is_ended_with_it(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    # The shell waits for the grandchild to be ready, then exits: only the grandchild is left.
    then = f'while [ ! -s {pidfile} ]; do sleep 0.02; done; exit 0'
    try:
        result = await asyncio.wait_for(
            run_process(stubborn_grandchild(pidfile, then=then), kill_grace=GRACE), GRACE + 5)
        assert result.exit_code == 0, result.stderr
        grandchild = int(pidfile.read_text())
        assert gone(grandchild), "the guard returned while the grandchild still ran"
    finally:
        if pidfile.exists() and not gone(pid := int(pidfile.read_text())):
            os.kill(pid, signal.SIGKILL)


async def test_commands_we_run_never_inherit_the_nats_secrets(monkeypatch):
    """az and ssh need no NATS setting; a password, token or URL with credentials in our
    environment must not reach them (or whatever az extension or ssh SendEnv passes on)."""
    monkeypatch.setenv("NATS_PASSWORD", "s3cret-pw")
    monkeypatch.setenv("NATS_TOKEN", "s3cret-token")
    monkeypatch.setenv("NATS_URL", "nats://alice:s3cret-url@host:4222")
    monkeypatch.setenv("AZURE_CONFIG_DIR", "/kept")
    result = await run_process(["env"], timeout=10)
    assert result.exit_code == 0, result.stderr
    assert "s3cret" not in result.stdout and "NATS_" not in result.stdout
    assert "AZURE_CONFIG_DIR=/kept" in result.stdout


async def test_stop_child_kills_a_child_that_ignores_sigterm_and_what_it_left_in_its_session(
        tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    # The shell ignores SIGTERM too, so only the escalation after the grace can end it.
    child = await spawn_child(["sh", "-c", "trap '' TERM; " + shlex.join(
        stubborn_grandchild(pidfile, then="wait"))])
    grandchild = read_pid(pidfile)
    try:
        started = time.monotonic()
        await asyncio.wait_for(stop_child(child, grace=GRACE), GRACE + 10)
        assert child.returncode == -signal.SIGKILL
        assert time.monotonic() - started >= GRACE  # the grace came first
        wait_until(lambda: gone(grandchild), timeout=5, message="the grandchild to go")
        await stop_child(child, grace=GRACE)  # safe twice
    finally:
        if not gone(grandchild):
            os.kill(grandchild, signal.SIGKILL)


async def test_stop_child_lets_a_child_that_stops_on_sigterm_exit_by_itself():
    code = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *_: sys.exit(7)); "
            "print('ready', flush=True); time.sleep(60)")
    child = await spawn_child([PYTHON, "-c", code], output=asyncio.subprocess.PIPE)
    assert await asyncio.wait_for(child.stdout.readline(), 10) == b"ready\n"
    await asyncio.wait_for(stop_child(child, grace=30), 10)
    assert child.returncode == 7


def test_a_long_lived_child_dies_with_its_sigkilled_parent(tmp_path):
    pidfile = tmp_path / "child.pid"
    parent_code = (
        "import asyncio, sys\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from vmlaunch.host.procs import spawn_child\n"
        "async def main():\n"
        "    child = await spawn_child(sys.argv[1:])\n"
        f"    open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n")
    parent = subprocess.Popen([PYTHON, "-c", parent_code, "sleep", "60"])
    try:
        child = read_pid(pidfile)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        wait_until(lambda: gone(child), timeout=5, message="the child to die with its parent")
    finally:
        parent.kill()
        if pidfile.exists() and not gone(pid := int(pidfile.read_text())):
            os.kill(pid, signal.SIGKILL)


async def test_commands_run_nicer_than_the_tool_so_they_cannot_starve_its_reports():
    result = await run_process([sys.executable, "-c", "import os; print(os.nice(0))"],
                               timeout=30)
    assert int(result.stdout) == min(19, os.nice(0) + COMMAND_NICENESS)


async def test_commands_share_one_session_so_their_nice_values_count_against_each_other():
    """With the scheduler's autogroups (on by default) every session gets an equal share of
    the CPU and a nice value counts only within its session: a command in a session of its
    own would take as much CPU as a read however nice it ran. Each command still leads a
    process group of its own (the group the guard ends)."""
    code = "import os; print(os.getsid(0), os.getpgrp(), os.getpid())"
    first, second = [await run_process([sys.executable, "-c", code], timeout=30)
                     for _ in range(2)]
    (sid1, group1, pid1), (sid2, group2, pid2) = (
        map(int, result.stdout.split()) for result in (first, second))
    assert sid1 == sid2 and sid1 not in (pid1, pid2)
    assert (group1, group2) == (pid1, pid2)


async def test_a_command_holds_no_descriptor_but_its_standard_three():
    """Not the guard's socket above all: a command (or a daemon it leaves) holding it would
    keep a dead guard looking alive, and could read other calls' requests."""
    code = "import os; print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))"
    result = await run_process([sys.executable, "-c", code], timeout=30)
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout) == [0, 1, 2, 3]  # 3: the listing's own


async def test_what_a_command_wrote_is_kept_when_a_daemon_it_left_holds_its_output():
    script = "echo important; setsid sleep 5 & exit 0"
    result = await asyncio.wait_for(run_process(["sh", "-c", script], kill_grace=0.5), 10)
    assert (result.exit_code, result.stdout) == (0, "important\n")
