"""Self-tests of what the simulator models for fleets (issue 10): the blocking create's
long-running-operation poll, `vm create --no-wait`, `vm get-instance-view` and the PutVM
write budget. Real `scripts/az-sim` subprocesses, as in tests/test_az_sim.py.
"""

from __future__ import annotations

import json
import time

import pytest
from test_az_sim import RG, sim_fixture, wait_for  # noqa: F401 (the fixture `sim`)

pytestmark = pytest.mark.timeout(60)

PUT_VM3MIN = ("(TooManyRequests) The request is being throttled as the limit has been reached "
              "for operation type - PutVM3Min. For more information, see - "
              "https://aka.ms/computethrottling")


def vm_record(sim, name: str) -> dict:
    return sim.state()["vms"][name]


def finish(client) -> tuple[int, str, str, float]:
    out, err = client.communicate(timeout=20)
    return client.returncode, out, err, time.time()


# ---------------------------------------------------------------- the LRO poll


def test_a_blocking_create_returns_at_the_first_30s_poll_after_the_deployment_ends(sim):
    sim.scenario(time_scale=0.05)  # create 20 s = 1 s; the default poll 30 s = 1.5 s
    client = sim.start_create("late")
    shown = wait_for(lambda: (s := sim.show("late")) and s["provisioningState"] == "Succeeded",
                     what="Succeeded")
    assert shown and client.poll() is None  # Azure knows; the client has not polled yet
    code, out, err, returned = finish(client)
    vm = vm_record(sim, "late")
    assert code == 0 and json.loads(out)["powerState"] == "VM running", err
    assert vm["ready_at"] - vm["created_at"] == pytest.approx(1.0)
    assert returned - vm["created_at"] >= 1.5


def test_lro_poll_seconds_sets_the_cadence_and_a_create_hears_at_the_poll_after_its_end(sim):
    sim.scenario(lro_poll_seconds=100, defaults={"create_seconds": 150})  # polls every 1 s
    client = sim.start_create("two-polls")
    wait_for(lambda: (s := sim.show("two-polls")) and s["provisioningState"] == "Succeeded",
             what="Succeeded")
    assert client.poll() is None
    code, _, err, returned = finish(client)
    vm = vm_record(sim, "two-polls")
    assert code == 0, err
    assert 2.0 <= returned - vm["created_at"] < 3.0  # the 2nd poll, not the 1st nor the 3rd


def test_a_deployment_failure_is_reported_at_the_poll_too(sim):
    sim.scenario(lro_poll_seconds=100, vms=[{"match": "bad", "fail": "AllocationFailed"}])
    client = sim.start_create("bad")
    wait_for(lambda: (s := sim.show("bad")) and s["provisioningState"] == "Failed",
             what="Failed")
    assert client.poll() is None
    code, out, err, returned = finish(client)
    assert (code, out) == (1, "")
    assert err.startswith('ERROR: {"status":"Failed"') and "AllocationFailed" in err
    assert returned - vm_record(sim, "bad")["created_at"] >= 1.0


# ---------------------------------------------------------------- --no-wait


def test_no_wait_prints_nothing_and_exits_after_the_put_while_provisioning_goes_on(sim):
    sim.scenario(time_scale=0.5)  # the PUT takes 1 s = 0.5 s; the create 20 s = 10 s
    started = time.time()
    p = sim.create("bg", "--no-wait")
    returned = time.time()
    assert (p.returncode, p.stdout) == (0, ""), p.stderr
    vm = vm_record(sim, "bg")
    assert returned - vm["created_at"] >= 0.5 and returned < vm["ready_at"]
    assert vm["ready_at"] - vm["created_at"] == pytest.approx(10.0)
    assert sim.show("bg")["provisioningState"] == "Creating"
    assert returned - started < 5.0


def test_no_wait_keeps_preflight_errors_and_the_vm_ends_on_the_deployments_schedule(sim):
    sim.scenario(vms=[{"match": "sku", "fail": "SkuNotAvailable", "fail_phase": "preflight"},
                      {"match": "alloc", "fail": "AllocationFailed"}])
    p = sim.create("sku", "--no-wait")
    assert p.returncode == 1 and "Exception Details:\t(SkuNotAvailable)" in p.stderr
    assert sim.show("sku") is None
    for name in ("alloc", "fine"):
        assert sim.create(name, "--no-wait").stdout == ""
    ended = {n: wait_for(lambda n=n: (s := sim.show(n))["provisioningState"] in (
        "Succeeded", "Failed") and s["provisioningState"], what=n) for n in ("alloc", "fine")}
    assert ended == {"alloc": "Failed", "fine": "Succeeded"}


# ---------------------------------------------------------------- vm get-instance-view


def test_get_instance_view_of_a_failed_vm_carries_the_error_code_and_message(sim):
    sim.scenario(vms=[{"match": "bad", "fail": "AllocationFailed"}])
    sim.create("bad", "--no-wait")
    wait_for(lambda: sim.show("bad")["provisioningState"] == "Failed", what="Failed")
    view = sim.ok("vm", "get-instance-view", "-g", RG, "-n", "bad")
    assert view["provisioningState"] == "Failed" and view["name"] == "bad"
    failed, power = view["instanceView"]["statuses"]
    assert sorted(failed) == ["code", "displayStatus", "level", "message", "time"]
    assert (failed["code"], failed["level"], failed["displayStatus"]) == (
        "ProvisioningState/failed/AllocationFailed", "Error", "Provisioning failed")
    assert failed["message"].startswith("Allocation failed. We do not have sufficient capacity")
    assert power == {"code": "PowerState/deallocated", "level": "Info",
                     "displayStatus": "VM deallocated"}


def test_get_instance_view_of_a_running_vm_by_id_and_of_a_missing_vm(sim):
    created = json.loads(sim.create("ok").stdout)
    view = sim.ok("vm", "get-instance-view", "--ids", created["id"])
    assert [s["code"] for s in view["instanceView"]["statuses"]] == [
        "ProvisioningState/succeeded", "PowerState/running"]
    missing = sim.run("vm", "get-instance-view", "-g", RG, "-n", "ghost")
    shown = sim.run("vm", "show", "-g", RG, "-n", "ghost")
    assert (missing.returncode, missing.stdout, missing.stderr) == (3, "", shown.stderr)
    assert "(ResourceNotFound)" in missing.stderr


# ---------------------------------------------------------------- the PutVM budget


def budget(sim) -> dict:
    return sim.state()["put_vm_budget"]


def test_the_default_put_vm_budget_is_240_per_3_minutes_and_1200_per_30_minutes(sim):
    sim.create("one", "--no-wait")
    assert budget(sim) == {
        "PutVM3Min": {"calls": 240, "seconds": 180, "used": 1, "remaining": 239, "throttled": 0},
        "PutVM30Min": {"calls": 1200, "seconds": 1800, "used": 1, "remaining": 1199,
                       "throttled": 0}}


def test_creates_past_the_put_vm_3min_budget_get_the_429_until_the_window_frees(sim):
    # A 10 s window (time scale 0.01): one call may take a second on a loaded machine.
    sim.scenario(put_vm_budget={"PutVM3Min": {"calls": 3, "seconds": 1000}},
                 vms=[{"match": "pre", "fail": "SkuNotAvailable", "fail_phase": "preflight"}])
    assert sim.create("pre").returncode == 1  # a preflight failure PUTs nothing
    assert [sim.create(n, "--no-wait").returncode for n in ("a", "b")] == [0, 0]
    assert sim.create("c").returncode == 0  # a blocking create spends one too
    p = sim.create("d", "--no-wait", "--debug")
    assert (p.returncode, p.stdout) == (1, "")
    assert f"azure.core.exceptions.HttpResponseError: {PUT_VM3MIN}\n" in p.stderr
    retry_after = int(p.stderr.split("'Retry-After': '")[1].split("'")[0])
    assert 1 <= retry_after <= 1000
    assert "'x-ms-ratelimit-remaining-resource': 'Microsoft.Compute/PutVM3Min;0'" in p.stderr
    state = sim.state()
    assert "d" not in state["vms"] and "d" not in state["create_attempts"]
    assert state["put_vm_budget"]["PutVM3Min"] == {"calls": 3, "seconds": 1000, "used": 3,
                                                   "remaining": 0, "throttled": 1}
    assert sim.run("vm", "delete", "-g", RG, "-n", "a", "--yes").returncode == 0  # DeleteVM
    wait_for(lambda: budget(sim)["PutVM3Min"]["remaining"] > 0, timeout=30, what="a free slot")
    assert sim.create("d", "--no-wait").returncode == 0


def test_the_30min_bucket_throttles_when_the_3min_one_has_room(sim):
    sim.scenario(put_vm_budget={"PutVM3Min": {"calls": 2, "seconds": 50},
                                "PutVM30Min": {"calls": 3, "seconds": 1000}})
    assert [sim.create(n, "--no-wait").returncode for n in ("a", "b")] == [0, 0]
    assert "PutVM3Min" in sim.create("c", "--no-wait").stderr
    wait_for(lambda: budget(sim)["PutVM3Min"]["remaining"] > 0, what="a free 3-minute slot")
    assert sim.create("c", "--no-wait").returncode == 0
    p = sim.create("d", "--no-wait")
    assert p.returncode == 1 and "operation type - PutVM30Min. For more" in p.stderr
    assert {k: v["throttled"] for k, v in budget(sim).items()} == {"PutVM3Min": 1,
                                                                  "PutVM30Min": 1}


def test_an_empty_put_vm_budget_switches_it_off(sim):
    sim.scenario(put_vm_budget={})
    assert [sim.create(f"v{i}", "--no-wait").returncode for i in range(3)] == [0, 0, 0]
    assert budget(sim) == {}


def test_bad_lro_and_budget_settings_are_reported(sim):
    sim.scenario(lro_poll_seconds=-1, put_vm_budget={"PutVM3Min": {"calls": 0}})
    p = sim.run("vm", "list")
    assert p.returncode == 1
    for problem in ("lro_poll_seconds must be", "put_vm_budget.PutVM3Min must be"):
        assert problem in p.stderr
