"""The package installs: console scripts `vm-launcher` and `vm-orchestrator` that work from
anywhere, with procguard.py shipped inside (every az call runs under it).

Offline, with the shared venv (setuptools, no `wheel`), so the copy is installed by
setuptools itself; `pip install .` does the same through a wheel.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, REPO
from workerkit import RG, launch_env

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The bin directory and the site-packages of a fresh install of a copy of the tree."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copytree(REPO / "vmlaunch", source / "vmlaunch",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([PYTHON, "-c", "from setuptools import setup; setup()", "-q", "install",
                    "--root", str(root / "root"), "--prefix", "/inst"],
                   cwd=source, check=True, capture_output=True, timeout=100)
    prefix = root / "root" / "inst"
    return prefix / "bin", next(prefix.glob("lib/python3*/site-packages"))


def run(installed: tuple[Path, Path], cwd: Path, script: str, *args: str,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`script` of the install, run outside the clone (so the clone's modules are not found)."""
    bin_dir, site = installed
    return subprocess.run([str(bin_dir / script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env={**(env or {}), "PYTHONPATH": str(site)})


@pytest.mark.parametrize(("script", "commands"), [
    ("vm-orchestrator", ("deploy", "plan", "status", "reset", "events", "streams")),
    ("vm-launcher", ("serve", "launch")),
])
def test_the_console_scripts_show_their_help(installed, tmp_path, script, commands):
    done = run(installed, tmp_path, script, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: {script} [OPTIONS] COMMAND [ARGS]...")
    assert all(f"  {command} " in done.stdout for command in commands)


def test_the_installed_copy_ships_procguard_and_launches_a_vm(installed, tmp_path, az_sim):
    _, site = installed
    assert (site / "vmlaunch" / "host" / "procguard.py").is_file()
    done = run(installed, tmp_path, "vm-launcher", "launch", "-n", "vm1", "-g", RG,
               "--image", "Ubuntu2204", "--location", "westus2", "--no-verify-ssh",
               "--no-nats", env=launch_env(az_sim))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("vm1: ready")
    assert az_sim.state()["create_counts"] == {"vm1": 1}
    found = subprocess.run([PYTHON, "-c", "import vmlaunch; print(vmlaunch.__file__)"],
                           cwd=tmp_path, capture_output=True, text=True, check=True,
                           env={"PYTHONPATH": str(site)})
    assert found.stdout.strip() == str(site / "vmlaunch" / "__init__.py")
