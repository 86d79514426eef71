"""The pure reducer, by property: one delivery's events, duplicated or in any order, give
the same final state, and `reduce` never changes the state it is given."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from vmlaunch.schema import messages as m
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.state.reducer import DeploymentState, initial, reduce

DEPLOYMENT = "dep-p"


def message(payload: m.Payload, attempt: int, tick: int, same_time: bool, seq: int) -> m.Message:
    ms = 0 if same_time else tick
    return m.Message(deployment_id=DEPLOYMENT, vm_name="vm-1", payload=payload,
                     attempt=attempt, generation=1, source="worker-a",
                     event_id=m.stable_event_id("delivery", seq),
                     time=f"2026-12-01T20:00:{ms // 1000:02d}.{ms % 1000:03d}Z")


def status(state: str, detail: str, zone: str | None = "1") -> m.Status:
    return m.Status(state=state, detail=detail, zone=zone, size="Standard_B2s")


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[VMSpec, list[m.Message]]:
    """One delivery of a request as a worker reports it: accepted, attempts that fail
    (reported, cleaned up, retried), then ready or a final failure."""
    spec = VMSpec(name="vm-1", resource_group="rg", image="img",
                  verify_ssh=draw(st.booleans()), verify_cloud_init=draw(st.booleans()))
    failures, gives_up = draw(st.integers(0, 3)), draw(st.booleans())
    same_time = draw(st.booleans())  # a fast worker: every event in one millisecond
    payloads: list[tuple[m.Payload, int]] = [(status("accepted", "accepted", None), 1)]
    for attempt in range(1, failures + 2):
        zone = str(attempt)
        payloads.append((status("creating", f"az vm create try {attempt}", zone), attempt))
        if attempt <= failures:
            final = gives_up and attempt == failures
            payloads += [(m.Failed(error_code="ZonalAllocationFailed", message="no room",
                                   retryable=True, attempts=attempt, final=final, zone=zone),
                          attempt),
                         (status("deleting", f"deleting try {attempt}", zone), attempt)]
            if final:
                break
            payloads.append((status("retrying", f"attempt {attempt + 1}", zone), attempt + 1))
            continue
        payloads.append((m.Complete(public_ip=f"20.0.0.{attempt}", private_ip="10.0.0.4",
                                    vm_id="id", duration_seconds=2.5, zone=zone), attempt))
        if spec.verify_ssh or spec.verify_cloud_init:
            payloads.append((status("verifying", "checking 20.0.0.1", zone), attempt))
        if spec.verify_ssh:
            payloads.append((m.SshVerified(ip="20.0.0.1", port=22, user="azureuser"), attempt))
        if spec.verify_cloud_init:
            payloads.append((m.CloudInitComplete(result="done", detail="done"), attempt))
    events = [message(p, attempt, 7 * i, same_time, i) for i, (p, attempt) in enumerate(payloads)]
    return spec, events


def fold(spec: VMSpec, events: list[m.Message]) -> DeploymentState:
    state = initial(DEPLOYMENT, [spec])
    for event in events:
        state = reduce(state, event)
    return state


@settings(max_examples=300, deadline=None)
@given(deliveries(), st.data())
def test_any_duplication_or_reordering_of_one_deliverys_events_gives_the_same_final_state(
        delivery: tuple[VMSpec, list[m.Message]], data: st.DataObject) -> None:
    spec, events = delivery
    in_order = fold(spec, events)
    again = data.draw(st.lists(st.sampled_from(events), max_size=len(events)))
    arrived = data.draw(st.permutations(events + again))
    assert fold(spec, arrived).vms == in_order.vms
    assert in_order.vms["vm-1"].finished  # the delivery was folded, not dropped


@settings(max_examples=100, deadline=None)
@given(deliveries(), st.data())
def test_reduce_never_changes_the_state_it_is_given(
        delivery: tuple[VMSpec, list[m.Message]], data: st.DataObject) -> None:
    spec, events = delivery
    state = fold(spec, events[: data.draw(st.integers(0, len(events)))])
    vms, folded, seen = dict(state.vms), dict(state.folded), state.seen
    for event in events:
        after = reduce(state, event)
        assert (dict(state.vms), dict(state.folded), state.seen) == (vms, folded, seen)
        assert after is not state


def test_a_senders_clock_running_ahead_never_puts_its_stale_events_last():
    # Worker A (its clock 10 s ahead) accepted the request and started a create, then
    # died; worker B took the redelivery over, adopted the VM and checked cloud-init (done
    # after A's stale times). A's events arrive first and carry later times: they must not
    # end up between B's in the fold, or the VM would read Creating when cloud-init is done
    # and never be ready.
    spec = VMSpec(name="vm-1", resource_group="rg", image="img", verify_ssh=False,
                  verify_cloud_init=True)

    def sent(payload: m.Payload, source: str, second: int, seq: int) -> m.Message:
        return m.Message(deployment_id=DEPLOYMENT, vm_name="vm-1", payload=payload,
                         attempt=1, generation=1, source=source,
                         event_id=m.stable_event_id(source, seq),
                         time=f"2026-12-01T20:00:{second:02d}.000Z")

    events = [sent(status("accepted", "accepted", None), "worker-a", 20, 1),
              sent(status("creating", "az vm create", "1"), "worker-a", 21, 2),
              sent(status("accepted", "accepted", None), "worker-b", 12, 1),
              sent(status("provisioning", "found vm-1 Creating", "1"), "worker-b", 13, 2),
              sent(m.Complete(public_ip="20.0.0.1", private_ip="10.0.0.4", vm_id="id",
                              duration_seconds=2.0, zone="1"), "worker-b", 14, 3),
              sent(m.CloudInitComplete(result="done", detail="done"), "worker-b", 25, 4)]
    state = initial(DEPLOYMENT, [spec])
    for event in events:
        state = reduce(state, event)
    vm = state.vms["vm-1"]
    assert (vm.ready, vm.state, vm.public_ip) == (True, "Succeeded", "20.0.0.1")
