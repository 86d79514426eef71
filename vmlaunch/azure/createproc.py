"""One `az vm create` child of the legacy poller, tracked without being awaited.

The bash loop kept a PID per host in memory and trusted it. Here a process is known by its
PID *and* its create time (psutil), so a reused PID is never taken for ours, and a kill
takes its whole tree (`procs.stop_process`). Custom data goes to a private file
(`argv.vm_create_command`) that lives exactly as long as the process.
"""

from __future__ import annotations

import asyncio
import contextlib

import psutil

from vmlaunch.azure.argv import vm_create_command
from vmlaunch.azure.azcli import AzCli
from vmlaunch.azure.failures import AzError, classify
from vmlaunch.host.procs import KILL_GRACE, stop_process
from vmlaunch.schema.vmspec import VMSpec


class CreateProcess:
    """One `az vm create` child, tracked as the bash loop did but safely: by PID *and* create
    time (psutil), so a reused PID is never taken for ours. It is not awaited while it runs;
    asyncio's pipe transport buffers its small output, read once it has exited."""

    def __init__(self, proc: asyncio.subprocess.Process, files: contextlib.ExitStack) -> None:
        self.proc = proc
        self.files = files  # the custom-data file, if any: closed (removed) by stop()
        try:
            self.create_time: float | None = psutil.Process(proc.pid).create_time()
        except psutil.Error:  # already gone (and not yet reaped): nothing to confuse it with
            self.create_time = None

    @classmethod
    async def start(cls, az: AzCli, spec: VMSpec, *, deployment_id: str) -> CreateProcess:
        """`spec.custom_data` is content: it goes to a private file, removed at the end."""
        files = contextlib.ExitStack()
        try:
            args = files.enter_context(vm_create_command(spec, deployment_id=deployment_id))
            return cls(await az.start(args, capture=True), files)
        except BaseException:
            files.close()
            raise

    @property
    def alive(self) -> bool:
        if self.proc.returncode is not None:
            return False
        try:
            proc = psutil.Process(self.proc.pid)
            ours = self.create_time is None or abs(proc.create_time() - self.create_time) < 0.01
            return ours and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    async def finish(self, *, grace: float) -> AzError | None:
        """Let it exit within `grace` seconds, else kill its tree; what its exit says."""
        if grace > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), grace)
        await self.stop()
        if self.proc.returncode == 0:
            return None
        try:
            stderr = await asyncio.wait_for(self.proc.stderr.read(), 5)  # type: ignore[union-attr]
        except TimeoutError:  # a grandchild holds the pipe open
            stderr = b""
        return classify(self.proc.returncode or 1, stderr.decode(errors="replace"))

    async def stop(self) -> None:
        """Kill the tree if it still runs, reap it, remove the custom-data file. Repeatable."""
        await stop_process(self.proc, grace=KILL_GRACE, create_time=self.create_time)
        self.files.close()
