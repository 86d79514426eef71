"""What `serve` takes: a worker's settings, checked before anything starts."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from vmlaunch.azure.writebudget import DEFAULT_WINDOWS, Window
from vmlaunch.bus.connection import ACK_WAIT, NatsSettings
from vmlaunch.lifecycle.tracked import FOLLOWED_AT_ONCE, TRACK_INTERVAL
from vmlaunch.schema.speccheck import allow_list_problems


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class WorkerSettings:
    """Everything `serve` takes; checks itself (ValueError listing every problem)."""

    nats: NatsSettings
    worker_id: str = field(default_factory=default_worker_id)
    az: str = "az"
    concurrency: int = FOLLOWED_AT_ONCE
    ssh_private_key: str | None = None
    grace: float = 30.0
    max_deliveries: int = 5
    ack_wait: float = ACK_WAIT
    track_interval: float = TRACK_INTERVAL  # seconds between listings of a resource group
    adopt_untagged: bool = False  # adopt (never delete) a same-named VM with no deployment tag
    # The only flags a request's extra_args may pass to az vm create (--allow-extra-arg).
    allow_extra_args: tuple[str, ...] = ()
    write_budget: tuple[Window, ...] = DEFAULT_WINDOWS  # the fleet's, shared through NATS

    def __post_init__(self) -> None:
        problems = [text for bad, text in (
            (self.concurrency < 1, "concurrency must be at least 1"),
            (self.grace < 0, "grace must not be negative"),
            (self.max_deliveries < 1, "max_deliveries must be at least 1"),
            (self.ack_wait < 1, "ack_wait must be at least 1 second"),
            (self.track_interval <= 0, "track_interval must be positive"),
            (not self.worker_id, "worker_id must not be empty"),
        ) if bad]
        problems += [f"allow_extra_args: {problem}"
                     for problem in allow_list_problems(self.allow_extra_args)]
        if problems:
            raise ValueError("Worker settings: " + "; ".join(problems) + ".")
