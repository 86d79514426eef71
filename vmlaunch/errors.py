"""The one error root and the one set of exit codes, shared by every layer.

Each layer has its own subclass of `VmLaunchError`, and each concrete error names its exit
code where it is defined (`class InUse(HostError, OSError, exit_code=ExitCode.CANNOT_RUN)`),
so the CLIs turn any of them into the right exit status in one place.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, ClassVar


class ExitCode(IntEnum):
    """The exit status of every command (the bash callers test these numbers)."""

    OK = 0
    FAILED = 1  # some VM failed, or the user declined
    BAD_INPUT = 2  # nothing was done: the input cannot be used (every problem listed)
    CANNOT_RUN = 3  # a prerequisite is missing: NATS, a writable state file, az
    INTERRUPTED = 130  # a stop signal: run again to resume


class VmLaunchError(Exception):
    """The root of this tool's errors; `exit_code` is what a command exits with."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILED

    def __init_subclass__(cls, exit_code: ExitCode | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code


class HostError(VmLaunchError):
    """Files, processes and signals of this machine."""


class SchemaError(VmLaunchError):
    """Messages and VM specs that cannot be accepted."""


class LifecycleError(VmLaunchError):
    """A VM's launch."""


class BusError(VmLaunchError):
    """NATS: the connection, the streams, publishing."""


class StateError(VmLaunchError):
    """The deployment state and events files."""


class PlansError(VmLaunchError):
    """Deployment plans and their sources."""


class RunnerError(VmLaunchError):
    """A deployment run."""
