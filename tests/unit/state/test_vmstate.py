"""The reducer: what each event means for a VM and for the state and events files."""

from __future__ import annotations

from vmlaunch.schema import messages as m
from vmlaunch.schema.vmspec import VMSpec, spec_problems
from vmlaunch.state.reducer import DeploymentView

SPEC = VMSpec(name="vm1", resource_group="rg", image="img", verify_ssh=True,
              verify_cloud_init=True)


def event(payload: m.Payload, *, attempt: int = 1, vm: str = "vm1", dep: str = "dep") -> m.Message:
    return m.Message(deployment_id=dep, vm_name=vm, payload=payload, attempt=attempt,
                     source="worker-a")


def happy_events() -> list[m.Message]:
    return [
        event(m.Status(state="accepted", detail="ok")),
        event(m.Status(state="creating", detail="az vm create", zone="1", size="S")),
        event(m.Complete(public_ip="20.0.0.1", private_ip="10.0.0.4", vm_id="id",
                         duration_seconds=3.0, zone="1", size="S")),
        event(m.SshVerified(ip="20.0.0.1", port=22, user="azureuser")),
        event(m.CloudInitComplete(result="done", detail="status: done")),
    ]


def test_a_vm_is_ready_only_after_every_requested_check():
    view = DeploymentView("dep", [SPEC])
    actions = []
    for message in happy_events():
        assert not view.vms["vm1"].ready
        actions += [a for a, _ in view.apply(message).log]
    assert view.vms["vm1"].ready and view.finished
    assert actions == ["vm_creation_started", "vm_creation_succeeded", "vm_ssh_verified",
                       "vm_cloudinit_complete", "vm_ready"]


def test_complete_writes_the_legacy_keys():
    view = DeploymentView("dep", [SPEC])
    change = None
    for message in happy_events()[:3]:
        change = view.apply(message)
    assert change is not None
    assert change.vm_fields["state"] == "Succeeded"
    assert change.vm_fields["public_ip"] == "20.0.0.1"
    assert change.vm_fields["private_ip"] == "10.0.0.4"


def test_duplicate_and_foreign_events_change_nothing():
    view = DeploymentView("dep", [SPEC])
    creating = happy_events()[1]
    assert view.apply(creating) is not None
    assert view.apply(creating) is None
    assert view.apply(event(m.Cancel(reason="x"), dep="other")) is None
    assert view.apply(event(m.Status(state="creating", detail="x"), vm="stranger")) is None


def test_replaying_the_same_events_rebuilds_the_same_progress():
    first, second = DeploymentView("dep", [SPEC]), DeploymentView("dep", [SPEC])
    events = happy_events()
    for message in events:
        first.apply(message)
    for message in events + events:
        second.apply(message)
    assert first.vms == second.vms


def test_a_redelivered_request_repeating_a_ready_vm_logs_nothing_new():
    view = DeploymentView("dep", [SPEC])
    for message in happy_events():
        view.apply(message)
    again = [event(m.Complete(public_ip="20.0.0.1", private_ip="10.0.0.4", vm_id="id",
                              duration_seconds=9.0, zone="1", size="S")),
             event(m.SshVerified(ip="20.0.0.1", port=22, user="azureuser")),
             event(m.CloudInitComplete(result="done", detail="status: done"))]
    assert [view.apply(message).log for message in again] == [[], [], []]
    assert view.vms["vm1"].ready


def test_only_a_final_failure_marks_the_vm_failed():
    view = DeploymentView("dep", [SPEC])
    attempt_failed = m.Failed(error_code="ZonalAllocationFailed", message="no", retryable=True,
                              attempts=1, final=False)
    assert view.apply(event(attempt_failed)).log[0][0] == "vm_attempt_failed"
    assert not view.vms["vm1"].failed
    final = m.Failed(error_code="InvalidParameter", message="bad", retryable=False, attempts=2,
                     final=True)
    change = view.apply(event(final, attempt=2))
    assert change.vm_fields["state"] == "Failed"
    assert change.vm_fields["last_error"] == "InvalidParameter: bad"
    assert view.finished


def test_cloud_init_error_is_not_ready():
    view = DeploymentView("dep", [SPEC.replace(verify_ssh=False)])
    for message in happy_events()[:3]:
        view.apply(message)
    change = view.apply(event(m.CloudInitComplete(result="error", detail="boom")))
    assert change.log[0][0] == "vm_cloudinit_failed"
    assert not view.vms["vm1"].ready


def test_spec_problems_lists_every_problem_at_once():
    spec = VMSpec(name="-bad-", resource_group="rg.", image="img", zone="4",
                  eviction_policy="Delete", custom_data="/nonexistent/cloud-init.yaml",
                  max_attempts=0)
    problems = spec_problems(spec, files_are_paths=True)
    joined = "\n".join(problems)
    for words in ("name must be", "resource_group", "zone '4'", "only allowed with priority",
                  "cannot be read", "max_attempts"):
        assert words in joined


def test_a_dead_lettered_request_marks_its_vm_failed():
    view = DeploymentView("dep", [SPEC])
    dead = m.DeadLetter(reason="delivered 6 times", subject="vm.create.request", deliveries=6,
                        excerpt="{}")
    change = view.apply(event(dead))
    assert change.vm_fields["state"] == "Failed"
    assert change.log[0][0] == "vm_request_deadlettered"
    assert view.finished
