"""The message schema: round trips, every refusal, forward compatibility, JSON Schema."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmlaunch.schema import messages as m
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.schema.wirejson import MAX_MESSAGE_BYTES, redacted_excerpt

SPEC = VMSpec(name="k0s-worker-1", resource_group="rg-1", image="Debian:debian-12:12-gen2:latest",
              location="westus2", zone="2", tags={"team": "infra"}, custom_data="#cloud-config\n",
              fallback_zones=["3"], extra_args=["--accelerated-networking", "true"])

EXAMPLES = {
    "request": m.CreateRequest(spec=SPEC),
    "status": m.Status(state="creating", detail="az vm create", zone="2", size="Standard_D2s_v5"),
    "complete": m.Complete(public_ip="20.1.2.3", private_ip="10.0.1.4", vm_id="/subs/x",
                           duration_seconds=61.5, zone="2"),
    "failed": m.Failed(error_code="ZonalAllocationFailed", message="no capacity", retryable=True,
                       attempts=1, final=False, zone="2", size="Standard_D2s_v5"),
    "ssh": m.SshVerified(ip="20.1.2.3", port=22, user="k0rdent"),
    "cloudinit": m.CloudInitComplete(result="done", detail="status: done"),
    "deadletter": m.DeadLetter(reason="not JSON", subject="vm.create.request", deliveries=1,
                               excerpt="xx"),
    "cancel": m.Cancel(reason="deadline"),
}


def envelope(example: m.Payload, **overrides) -> dict:
    body = json.loads(m.encode(m.Message(deployment_id="dep-1", vm_name="k0s-worker-1",
                                         payload=example, attempt=1, source="worker-a")))
    body.update(overrides)
    return body


@pytest.mark.parametrize("payload", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_every_message_type_survives_a_round_trip(payload):
    message = m.Message(deployment_id="dep-1", vm_name="k0s-worker-1", payload=payload,
                        attempt=2, source="worker-a")
    data = m.encode(message)
    assert b" " not in data.split(b'"detail"')[0][:20]  # compact separators
    assert m.decode(data) == message
    assert m.decode(data).subject == json.loads(data)["type"]


def test_encoded_time_is_utc_iso8601_with_milliseconds():
    body = envelope(EXAMPLES["status"])
    assert body["time"].endswith("Z") and len(body["time"]) == len("2026-01-31T12:00:00.000Z")


REFUSALS = {
    "not json": (b"{nope", "", "not JSON"),
    "not an object": (b"[1, 2]", "", "not a JSON object"),
    "unknown type": (envelope(EXAMPLES["status"], type="vm.create.explode"), "type", "unknown"),
    "newer major": (envelope(EXAMPLES["status"], schema="azure-vm-launch/2.0"), "schema",
                    "unsupported schema version 2.0"),
    "foreign schema": (envelope(EXAMPLES["status"], schema="other/1.0"), "schema", "expected"),
    "missing envelope field": ({k: v for k, v in envelope(EXAMPLES["status"]).items()
                                if k != "deployment_id"}, "deployment_id", "missing"),
    "extra envelope field": (envelope(EXAMPLES["status"], colour="red"), "colour", "unknown"),
    "wrong envelope type": (envelope(EXAMPLES["status"], attempt="1"), "attempt", "expected int"),
    "bool is not an int": (envelope(EXAMPLES["status"], attempt=True), "attempt", "expected int"),
    "time without ms": (envelope(EXAMPLES["status"], time="2026-01-01T00:00:00Z"), "time",
                        "milliseconds"),
    "missing payload field": (envelope(m.Status(state="creating", detail="x"),
                                       payload={"state": "creating"}), "payload.detail",
                              "missing required field"),
    "extra payload field": (envelope(EXAMPLES["cancel"], payload={"reason": "x", "force": True}),
                            "payload.force", "unknown field"),
    "wrong payload type": (envelope(EXAMPLES["ssh"], payload={"ip": "1.2.3.4", "port": "22",
                                                               "user": "u"}),
                           "payload.port", "expected an integer"),
    "bad enum": (envelope(EXAMPLES["status"], payload={"state": "exploded", "detail": "x"}),
                 "payload.state", "must be one of"),
    "bad nested spec field": (envelope(EXAMPLES["request"], payload={"spec": {
        **SPEC.to_dict(), "tags": {"a": 1}}}), "payload.spec.tags.a", "expected a string"),
}


@pytest.mark.parametrize(("raw", "field", "words"), REFUSALS.values(), ids=REFUSALS.keys())
def test_decode_refuses_bad_messages_naming_the_field(raw, field, words):
    data = raw if isinstance(raw, bytes) else json.dumps(raw).encode()
    with pytest.raises(m.MessageError) as caught:
        m.decode(data)
    assert caught.value.field == field
    assert words in str(caught.value)


def test_decode_refuses_oversized_messages_before_parsing():
    data = b"{" + b" " * MAX_MESSAGE_BYTES + b"}"
    with pytest.raises(m.MessageError, match="more than 262144"):
        m.decode(data)


def test_a_newer_minor_version_with_extra_optional_fields_is_accepted():
    body = envelope(EXAMPLES["complete"], schema="azure-vm-launch/1.7", trace_id="abc")
    body["payload"]["nic_id"] = "/nic"
    decoded = m.decode(json.dumps(body).encode())
    assert decoded.payload == EXAMPLES["complete"]


def test_stable_event_ids_repeat_for_the_same_parts_only():
    assert m.stable_event_id("req", 1, 3) == m.stable_event_id("req", 1, 3)
    assert m.stable_event_id("req", 1, 3) != m.stable_event_id("req", 2, 3)


def test_redacted_excerpt_never_shows_custom_data():
    data = m.encode(m.Message(deployment_id="d", vm_name="v", payload=EXAMPLES["request"]))
    secret = data.replace(b"#cloud-config", b"PrivateKey=SECRET")
    assert "SECRET" not in redacted_excerpt(secret, limit=10_000)
    assert "SECRET" not in redacted_excerpt(secret[:-5], limit=10_000)


def test_schema_command_prints_a_json_schema_for_every_type():
    out = subprocess.run([sys.executable, "messages.py", "schema"], capture_output=True,
                         text=True, check=True)
    schemas = json.loads(out.stdout)
    assert set(schemas) == {s.value for s in m.Subject}
    request = schemas["vm.create.request"]["properties"]["payload"]
    assert "custom_data" in request["properties"]["spec"]["properties"]
    assert schemas["vm.create.failed"]["properties"]["payload"]["required"] == [
        "error_code", "message", "retryable", "attempts", "final"]


text = st.text(max_size=40)


@given(st.builds(m.Status, state=st.sampled_from(["accepted", "creating", "cancelled"]),
                 detail=text, zone=st.none() | st.sampled_from(["1", "2"]), size=st.none() | text),
       text, st.integers(min_value=0, max_value=99))
def test_any_status_round_trips(status, vm_name, attempt):
    message = m.Message(deployment_id="dep", vm_name=vm_name, payload=status, attempt=attempt)
    assert m.decode(m.encode(message)) == message


@given(st.builds(m.Failed, error_code=text, message=text, retryable=st.booleans(),
                 attempts=st.integers(0, 10), final=st.booleans(), zone=st.none() | text,
                 size=st.none() | text))
def test_any_failure_round_trips(failed):
    message = m.Message(deployment_id="dep", vm_name="vm", payload=failed)
    assert m.decode(m.encode(message)) == message
