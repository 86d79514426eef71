"""Where every event of a deployment goes: the reducer, the state files, the display.

The NATS path and the legacy poller both hand their events to `Tracker.sink`. Which events
count is decided by generation, never by clock: each VM follows only the events of the
request it launched (the reducer drops the others). On a rerun the events stream is read
again from around when each unfinished VM was requested: an event the events file already
holds (same `event_id`) rebuilds the progress and the state file but is not logged twice;
events that arrived while the orchestrator was away are written now. `decide` is the resume
rule: which VMs are done, in flight (same request generation), or new.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from vmlaunch.display.views import Display
from vmlaunch.plans.plan import Plan
from vmlaunch.schema.messages import Cancel, Failed, Message, utc_now_ms
from vmlaunch.schema.vocabulary import VmState
from vmlaunch.state.reducer import ORCHESTRATOR, DeploymentView, Launched, ReadyBefore
from vmlaunch.state.writer import Recorder, StateWriter

IN_FLIGHT_STATES = (VmState.CREATING, VmState.DELETING, VmState.SUCCEEDED)


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@dataclass(frozen=True)
class Ticket:
    """One VM to launch: its request generation and when it was requested."""

    generation: int
    requested_at: str  # UTC ISO-8601 with milliseconds
    fresh: bool  # a new generation (False: resuming one in flight)


def decide(plan: Plan, vm_states: Mapping[str, Any],
           azure: Mapping[str, str]) -> tuple[list[str], dict[str, Ticket]]:
    """(VMs already done, tickets for the rest) from the state file and one `az vm list`.

    Done: the file says Succeeded and verified, and Azure says Succeeded. In flight: the
    file has a generation we requested and says Creating/Deleting, or Succeeded but not
    yet verified.
    Anything else (absent, Failed, Deleted, gone from Azure) gets the next generation.
    """
    done, tickets = [], {}
    now = utc_now_ms()
    for name in plan.names:
        entry = vm_states.get(name)
        entry = entry if isinstance(entry, Mapping) else {}
        generation = entry.get("generation")
        generation = generation if isinstance(generation, int) else 0
        state, requested = entry.get("state"), entry.get("requested_at")
        verified = state == VmState.SUCCEEDED and entry.get("verified") is True
        if verified and azure.get(name) == VmState.SUCCEEDED:
            done.append(name)
        elif generation and state in IN_FLIGHT_STATES and not verified and _is_time(requested):
            tickets[name] = Ticket(generation, requested, fresh=False)
        else:
            tickets[name] = Ticket(generation + 1, now, fresh=True)
    return done, tickets


def _is_time(value: Any) -> bool:
    try:
        epoch(value)
    except (TypeError, ValueError):
        return False
    return True


class Tracker:
    """Folds events into the reducer and writes what changes (`Recorder`); `changed` is set
    on each change."""

    def __init__(self, plan: Plan, *, writer: StateWriter, display: Display,
                 written: set[str]) -> None:
        self.plan = plan
        self.view = DeploymentView(plan.deployment_id, plan.vms)
        self.recorder = Recorder(self.view, writer, written)
        self.writer = writer
        self.display = display
        self.changed = asyncio.Event()

    def mark_done(self, name: str, entry: Mapping[str, Any]) -> None:
        """A VM finished by an earlier run: ready, and deaf to old events."""
        self.recorder.apply(ReadyBefore(name, str(entry.get("public_ip") or ""),
                                        str(entry.get("private_ip") or "")))  # writes nothing

    def launch(self, name: str, ticket: Ticket) -> dict[str, Any]:
        """Follow this generation's events only; a new generation starts a clean entry:
        its fields are returned, for the caller to write with its launch event."""
        change = self.recorder.apply(Launched(name, ticket.generation, ticket.requested_at,
                                              fresh=ticket.fresh), write=False)
        return dict(change.vm_fields) if change is not None else {}

    def renumber(self, name: str, ticket: Ticket) -> None:
        """A fresh ticket moved to a generation never used before: follow and record it."""
        self.recorder.apply(Launched(
            name, ticket.generation, ticket.requested_at, fresh=True,
            note=("vm_generation_changed", f"VM {name}: request generation "
                  f"{ticket.generation} (the earlier ones were already used)")))

    async def sink(self, message: Message) -> None:
        """The one entry of events: the NATS feed, the legacy poller, the deadline."""
        replayed = self.recorder.replayed(message)
        change = self.recorder.apply(message)
        if change is None:
            return
        self.display.event(message, change, self.view, replayed=replayed)
        self.changed.set()

    def unfinished(self) -> list[str]:
        return [name for name, vm in self.view.vms.items() if not vm.finished]

    async def fail(self, name: str, code: str, reason: str) -> None:
        """Mark a VM finally failed by the orchestrator itself (deadline, no workers)."""
        vm = self.view.vms[name]
        await self.sink(Message(
            deployment_id=self.plan.deployment_id, vm_name=name, source=ORCHESTRATOR,
            attempt=vm.attempt, generation=vm.generation,
            payload=Failed(error_code=code, message=reason, retryable=True, attempts=vm.attempt,
                           final=True, zone=vm.zone, size=vm.size)))

    async def hand_over(self, name: str, owner: str, reason: str) -> Message:
        """The cancel that gives a VM to `owner`, applied here first; publish it for workers."""
        cancel = Message(deployment_id=self.plan.deployment_id, vm_name=name,
                         source=ORCHESTRATOR, generation=self.view.vms[name].generation,
                         payload=Cancel(reason=reason, owner=owner))
        await self.sink(cancel)
        return cancel

    def note(self, action: str, text: str, *, show: bool = True,
             vm_states: dict[str, dict[str, Any]] | None = None) -> None:
        """A deployment-level line in the events file (and on the display), with the VM
        changes it records, if any."""
        self.writer.append_event(action, text, vm_states=vm_states)
        if show:
            self.display.note(text)

    def end(self, text: str, *, all_ready: bool) -> None:
        """The run's last line in the events file, and the phase `vms_ready` if all are."""
        self.writer.append_event("vm_launch_finished", text)
        if all_ready:
            self.writer.set_phase("vms_ready")
