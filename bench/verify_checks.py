"""Checking N VMs at once: cloud-init by run-command (bounded pool, and unbounded) and over
SSH; wall time, peak child processes and their peak RSS for each method.

The run-command checks go to the simulator, whose `run_command_seconds` (20 s, the real
minimum, azure-cli.md §7) is scaled by --time-scale; the SSH checks (`ssh ... true`, then
`cloud-init status --wait --long`, as `verify_vm` does with `cloud_init_check: ssh`) go to
one real sshd on loopback whose sessions have a stand-in `cloud-init` (tests/kits). A
simulator process is ~30 MB where a real `az` is ~100 MB (§4).

    .venv/bin/python bench/verify_checks.py [--vms 50] [--pool 8] [--time-scale 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "kits")]
from verifykit import CloudInit  # noqa: E402
from workerkit import Sshd  # noqa: E402

from vmlaunch.azure import verify  # noqa: E402
from vmlaunch.azure.azcli import AzCli  # noqa: E402
from vmlaunch.schema.vmspec import VMSpec  # noqa: E402

RG = "bench-rg"
RUN_COMMAND_SECONDS = 20


class Peak:
    """The most commands (az, ssh) this process ran at once, and the most RSS they and
    their procguard parents held at once; not counting the tree of `vm_side` (the sshd
    and its sessions stand for the VMs)."""

    def __init__(self, vm_side: int | None = None) -> None:
        self.processes, self.rss, self.guarded_rss = 0, 0, 0
        self._vm_side, self._stop = vm_side, threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.02):
            sizes = {False: [0], True: [0]}  # by "is a procguard"
            for child in set(me.children(recursive=True)) - self._vms():
                try:
                    guard = "procguard.py" in " ".join(child.cmdline())
                    sizes[guard].append(child.memory_info().rss)
                except psutil.Error:
                    continue
            commands = sizes[False]
            self.processes = max(self.processes, len(commands) - 1)
            self.rss = max(self.rss, sum(commands))
            self.guarded_rss = max(self.guarded_rss, sum(commands) + sum(sizes[True]))

    def _vms(self) -> set[psutil.Process]:
        if self._vm_side is None:
            return set()
        try:
            root = psutil.Process(self._vm_side)
            return {root, *root.children(recursive=True)}
        except psutil.Error:
            return set()

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def simulator(work: Path, time_scale: float) -> None:
    """This process's az is the simulator: VMs at 127.0.0.1, cloud-init already done."""
    (work / "scenario.yaml").write_text(
        f"time_scale: {time_scale}\nlocation: westus2\npublic_ip: 127.0.0.1\n"
        f"defaults: {{create_seconds: 1, run_command_seconds: {RUN_COMMAND_SECONDS}}}\n")
    # AZ_SIM_SERVER=0: each call a whole process of ours, so that its CPU and memory are
    # counted here (the fork server's children are not our descendants).
    os.environ.update(AZ_CLI=str(REPO / "scripts" / "az-sim"), AZ_SIM_SERVER="0",
                      AZ_SIM_STATE=str(work / "sim-state"),
                      AZ_SIM_SCENARIO=str(work / "scenario.yaml"),
                      PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


async def create_vms(az: AzCli, names: list[str]) -> None:
    slots = asyncio.Semaphore(8)

    async def create(name: str) -> None:
        async with slots:
            done = await az.run(["vm", "create", "-g", RG, "-n", name, "--image", "Ubuntu2204"])
            if not done.ok:
                sys.exit(f"creating {name} failed: {done.stderr}")
    await asyncio.gather(*(create(name) for name in names))


async def measure(label: str, checks: list[Callable[[], Awaitable[bool]]], *,
                  vm_side: int | None = None) -> dict:
    cpu = _children_cpu()
    with Peak(vm_side) as peak:
        started = time.monotonic()
        passed = await asyncio.gather(*(check() for check in checks))
        wall = time.monotonic() - started
    return {"method": label, "wall": wall, "ok": sum(passed), "processes": peak.processes,
            "rss": peak.rss, "guarded_rss": peak.guarded_rss, "cpu": _children_cpu() - cpu}


def _children_cpu() -> float:
    """CPU seconds of the ended commands and guards (the sshd has not ended: not counted)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def by_run_command(az: AzCli, specs: list[VMSpec], pool: int) -> dict:
    verify.limit_run_commands(az, pool)

    def check(spec: VMSpec) -> Callable[[], Awaitable[bool]]:
        async def run() -> bool:
            return (await verify.check_cloud_init(spec, az=az, ip="", private_key=None)).ok
        return run
    label = f"run-command, pool {pool}" if pool < len(specs) else "run-command, unbounded"
    return await measure(label, [check(spec) for spec in specs])


async def by_ssh(az: AzCli, specs: list[VMSpec], sshd: Sshd) -> dict:
    key = str(sshd.key)

    def check(spec: VMSpec) -> Callable[[], Awaitable[bool]]:
        async def run() -> bool:
            ssh = await verify.check_ssh(spec, ip="127.0.0.1", private_key=key, backoff=0.1)
            cloud = await verify.check_cloud_init(spec, az=az, ip="127.0.0.1",
                                                  private_key=key, backoff=0.1)
            return ssh.ok and cloud.ok
        return run
    ssh_specs = [spec.replace(cloud_init_check="ssh", ssh_port=sshd.port, ssh_user=sshd.user)
                 for spec in specs]
    assert sshd.proc is not None
    return await measure("ssh + cloud-init over ssh", [check(spec) for spec in ssh_specs],
                         vm_side=sshd.proc.pid)


def start_sshd(work: Path, vms: int) -> Sshd:
    """The test kit's sshd, told to accept every VM's connection at once (one real sshd
    per VM would see one each)."""
    (work / "sshd").mkdir()
    sshd = Sshd(work / "sshd").start()
    config = work / "sshd" / "sshd_config"
    config.write_text(config.read_text() + f"MaxStartups {4 * vms}\n")
    assert sshd.proc is not None
    sshd.proc.send_signal(signal.SIGHUP)  # re-reads its configuration
    time.sleep(1)  # sshd re-executes itself; a connection meanwhile is refused
    CloudInit(sshd, work / "cloud-init", wait=False)
    return sshd


def report(rows: list[dict], *, vms: int, pool: int, time_scale: float) -> None:
    print(f"{vms} VMs; a run-command lasts {RUN_COMMAND_SECONDS} s simulated "
          f"({RUN_COMMAND_SECONDS * time_scale:g} s here); ssh against one local sshd; "
          f"load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print(f"{'method':<26} {'wall':>7} {'ok':>4} {'peak commands':>14} {'their RSS':>10} "
          f"{'+ guards':>9} {'CPU':>7}")
    for r in rows:
        print(f"{r['method']:<26} {r['wall']:>6.2f}s {r['ok']:>4} {r['processes']:>14} "
              f"{r['rss'] / 2**20:>8.0f}MB {r['guarded_rss'] / 2**20:>7.0f}MB "
              f"{r['cpu']:>6.1f}s")
    waves = math.ceil(vms / pool)
    print(f"\nOn Azure (>= {RUN_COMMAND_SECONDS} s per run-command, ~100 MB per az): pool "
          f"{pool}: >= {waves * RUN_COMMAND_SECONDS} s and ~{pool * 100} MB; unbounded: "
          f">= {RUN_COMMAND_SECONDS} s and ~{vms * 100} MB; ssh: one handshake per check.")


async def run(vms: int, pool: int, time_scale: float) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    simulator(work, time_scale)
    az = AzCli()
    names = [f"vm-{i}" for i in range(vms)]
    await create_vms(az, names)
    specs = [VMSpec(name=name, resource_group=RG, image="Ubuntu2204", cloud_init_timeout=600)
             for name in names]
    rows = [await by_run_command(AzCli(), specs, pool),
            await by_run_command(AzCli(), specs, vms)]
    sshd = start_sshd(work, vms)
    try:
        rows.append(await by_ssh(az, specs, sshd))
    finally:
        sshd.stop()
    report(rows, vms=vms, pool=pool, time_scale=time_scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--pool", type=int, default=verify.DEFAULT_RUN_COMMAND_CONCURRENCY)
    parser.add_argument("--time-scale", type=float, default=0.05)
    args = parser.parse_args()
    asyncio.run(run(args.vms, args.pool, args.time_scale))


if __name__ == "__main__":
    main()
