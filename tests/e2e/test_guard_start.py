"""A machine where the process guard cannot start (procguard.py, which runs every `az` and
`ssh` of a tool process): no command can run, so every command that would run one exits 3
at once, with the reason, and launches nothing, instead of taking each call's NOT_RUN for
an unknown outcome and retrying until the deadline. The fault is real: a copy of the tool
whose procguard.py exits at once, as one whose Python cannot start would."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, AzSim

pytestmark = pytest.mark.timeout(120)

FAST = ["--image", "Debian12", "--no-verify-ssh", "--retry-backoff", "0.05"]
COMMANDS = {
    "deploy": ["orchestrator.py", "deploy", "--vm", "vm-1:1", "--resource-group", "rg-test",
               "--location", "westus2",
               "--legacy-poll", "--poll-interval", "0.2", "-y", *FAST],
    "launch": ["vm_launcher.py", "launch", "-n", "vm-1", "-g", "rg-test", "--zone", "1",
               "--location", "westus2", "--no-nats", *FAST],
    # before NATS too: no connection is tried (nothing listens on port 9)
    "launch-nats": ["vm_launcher.py", "launch", "-n", "vm-1", "-g", "rg-test", "--zone", "1",
                    "--location", "westus2", "--nats-url", "nats://127.0.0.1:9", *FAST],
    "serve": ["vm_launcher.py", "serve", "--nats-url", "nats://127.0.0.1:9"],
}


def tool_without_a_guard(root: Path) -> Path:
    """A copy of the tool whose guard exits 1 before it answers."""
    copy = root / "tool"
    copy.mkdir()
    for script in ("orchestrator.py", "vm_launcher.py", "messages.py"):
        shutil.copy2(REPO / script, copy / script)
    shutil.copytree(REPO / "vmlaunch", copy / "vmlaunch",
                    ignore=shutil.ignore_patterns("__pycache__"))
    guard = copy / "vmlaunch" / "host" / "procguard.py"
    main = 'if __name__ == "__main__":\n'
    assert main in guard.read_text()
    guard.write_text(guard.read_text().replace(main, main + "    sys.exit(1)\n"))
    return copy


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_exits_3_at_once_when_no_guard_can_start(tmp_path, az_sim: AzSim, command):
    tool = tool_without_a_guard(tmp_path)
    script, *args = COMMANDS[command]
    (tmp_path / "run").mkdir()
    done = subprocess.run([PYTHON, str(tool / script), *args], cwd=tmp_path / "run",
                          env=az_sim.env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr + done.stdout
    assert "the process guard" in done.stderr and "did not start" in done.stderr
    assert "NATS" not in done.stderr, done.stderr  # the guard first: before any connection
    assert not az_sim.state_path.exists() or az_sim.state()["create_counts"] == {}
