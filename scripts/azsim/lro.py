"""The `vm create` client's long-running-operation poller, as azure-core's.

The deployment runs on the "Azure" side (its end is in the VM record). The client learns of
it only at a poll: every `lro_poll_seconds` (30 by default: azure-mgmt-resource's interval
when ARM sends no Retry-After) after the PUT's answer, so it hears ~15 s late on average.
"""

from __future__ import annotations

import math

from .context import Ctx
from .errors import PREEMPTED, deployment_error
from .resources import create_output
from .state import FOREVER


def poll_after(ctx: Ctx, accepted: float, end: float) -> float:
    """When azure-core's poller, polling every lro_poll from the PUT's answer on, sees `end`."""
    poll = ctx.scn.lro_poll
    if end >= FOREVER or poll <= 0:
        return max(end, accepted)
    return accepted + max(1, math.ceil((end - accepted) / poll)) * poll


class _Preempted(Exception):
    """A delete or a newer PUT cut the operation short (args: when it was seen)."""


def _superseded(vm: dict | None, plan: dict, before: float) -> bool:
    """Whether the record shows the planned operation cut short before `before`."""
    if vm is None:
        return True
    if vm["op"] != plan["op"]:
        return vm["created_at"] < before
    return vm.get("deleting_since") is not None and vm["deleting_since"] < before


def await_deployment(ctx: Ctx, spec: dict, plan: dict, accepted: float) -> dict:
    """Learn the operation's end at the first poll after it, as azure-cli does."""
    rg, name = spec["resource_group"], spec["name"]
    ready = FOREVER if plan["ready_at"] is None else plan["ready_at"]

    def check() -> None:
        st, t = ctx.view()
        if t < ready and _superseded(st["vms"].get(name), plan, ready):
            raise _Preempted(t)

    try:
        ctx.sleep_until(poll_after(ctx, accepted, ready), check)
    except _Preempted as seen:
        ctx.sleep_until(poll_after(ctx, accepted, seen.args[0]))
        raise deployment_error(rg, name, "OperationPreempted", PREEMPTED, nested=False) from None
    if plan["outcome"] == "Failed":
        raise deployment_error(rg, name, plan["code"], plan["message"], nested=True)
    st, _ = ctx.view()
    vm = st["vms"].get(name)
    if _superseded(vm, plan, ready):
        raise deployment_error(rg, name, "OperationPreempted", PREEMPTED, nested=False)
    return create_output(vm)
