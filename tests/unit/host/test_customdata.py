"""Custom-data files live in a private per-process directory that goes on every exit, and
what a SIGKILL leaves is swept at the next start. Real workers, NATS and signals."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest
from conftest import async_wait_until
from workerkit import Bus, running, spec

from vmlaunch.host import customdata

pytestmark = pytest.mark.timeout(90)

SLOW_CREATE = {"time_scale": 0.05, "defaults": {"create_seconds": 400}}  # 20 s: mid-create


def private_root(tmp: Path) -> Path:
    return tmp / f"vmlaunch-{os.getuid()}"


async def custom_data_files(tmp: Path, pid: int) -> list[Path]:
    own = private_root(tmp) / str(pid)
    return await async_wait_until(lambda: own.is_dir() and list(own.iterdir()), timeout=20,
                                  message="the create's custom-data file")


async def test_a_sigkilled_workers_file_stays_and_the_next_start_sweeps_it(
        nats_server, az_sim, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    az_sim.scenario(SLOW_CREATE)
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as ws:
        first = ws.start("w1", env={"TMPDIR": str(tmp)})
        await bus.request(spec("vm-cd", custom_data="#cloud-config\nsecret"))
        [left] = await custom_data_files(tmp, first.pid)
        own = left.parent
        assert stat.S_IMODE(own.stat().st_mode) == 0o700
        assert stat.S_IMODE(private_root(tmp).stat().st_mode) == 0o700
        assert stat.S_IMODE(left.stat().st_mode) == 0o600
        ws.signal("w1", signal.SIGKILL)
        await ws.wait_exit("w1")
        assert left.exists()  # nothing runs at a SIGKILL

        ws.start("w2", env={"TMPDIR": str(tmp)}, ack_wait=30)
        await async_wait_until(lambda: not own.exists(), timeout=20,
                               message="the next start to sweep the dead worker's directory")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
async def test_a_signalled_worker_removes_its_directory_on_the_way_out(
        nats_server, az_sim, tmp_path, sig):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    az_sim.scenario(SLOW_CREATE)
    async with Bus(nats_server.url) as bus, running(nats_server.url, az_sim, tmp_path) as ws:
        worker = ws.start("w1", "--grace", "0.5", env={"TMPDIR": str(tmp)})
        await bus.request(spec("vm-cd", custom_data="#cloud-config\nsecret"))
        [left] = await custom_data_files(tmp, worker.pid)
        ws.signal("w1", sig)
        await ws.wait_exit("w1")
        assert not left.parent.exists()


def test_a_directory_someone_else_can_write_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    planted = private_root(tmp_path)
    planted.mkdir(mode=0o777)
    os.chmod(planted, 0o777)  # e.g. made by another user to read our cloud-init secrets
    with pytest.raises(PermissionError, match="not a private directory"), \
            customdata.custom_data_file("secret"):
        pass


@pytest.mark.parametrize("plant", ["symlink", "open-dir"])
def test_the_sweep_never_reaches_into_a_planted_root(tmp_path, monkeypatch, plant):
    """<tmp>/vmlaunch-<uid> has a name anyone can predict: planted as a symlink to our own
    files (a year-named folder looks like a dead pid's directory) or as a directory others
    may write, the sweep must leave what it leads to alone."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    mine = tmp_path / "home" / "projects"
    (mine / "2024").mkdir(parents=True)
    (mine / "2024" / "thesis.tex").write_text("years of work")
    if plant == "symlink":
        private_root(tmp_path / "tmp").symlink_to(mine)
    else:
        private_root(tmp_path / "tmp").mkdir(mode=0o777)
        os.chmod(private_root(tmp_path / "tmp"), 0o777)
        (private_root(tmp_path / "tmp") / "2024").symlink_to(mine / "2024")
    assert customdata.sweep() == []
    assert (tmp_path / "home" / "projects" / "2024" / "thesis.tex").exists()
