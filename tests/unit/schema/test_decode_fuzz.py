"""`decode` and every helper that reads raw bytes, against anything: hypothesis fuzzing
(10,000 cases in all) and a corpus of hostile payloads.

The property: `decode` returns a Message that re-encodes and decodes to itself, or raises
MessageError, never anything else; the dead letter of any bytes encodes.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hostile import HOSTILE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmlaunch.bus.publish import dead_letter
from vmlaunch.schema.messages import (
    Cancel,
    Complete,
    CreateRequest,
    Message,
    MessageError,
    Status,
    Subject,
    decode,
    encode,
)
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.schema.wirejson import redacted_excerpt


def fuzz(cases: int) -> settings:
    return settings(max_examples=cases, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


_SPEC = VMSpec(name="vm-1", resource_group="rg-1", image="Ubuntu2204", zone="1",
               tags={"team": "infra"}, custom_data="#cloud-config\n", fallback_zones=["2"])
VALID_BODIES = [json.loads(encode(Message(deployment_id="dep-1", vm_name="vm-1", payload=p,
                                          attempt=1, source="w1")))
                for p in (CreateRequest(spec=_SPEC), Status(state="creating", detail="x"),
                          Complete(public_ip="1.2.3.4", private_ip="10.0.0.4", vm_id="/v",
                                   duration_seconds=1.5), Cancel(reason="deadline"))]

surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, categories=["Cs"])
hostile_text = st.text(st.characters() | surrogates, max_size=12)
scalars = (st.none() | st.booleans() | hostile_text
           | st.integers() | st.integers(min_value=2**60, max_value=10**400)
           | st.floats(allow_nan=True, allow_infinity=True))
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(hostile_text, inner, max_size=3), max_leaves=6)


def check(data: bytes) -> None:
    """The property every input must satisfy."""
    try:
        message = decode(data)
    except MessageError as exc:
        assert len(str(exc)) < 1000
        str(exc).encode()  # safe to log and to put into a dead letter
    else:
        assert decode(encode(message)) == message
    letter = dead_letter(data, reason="unreadable", request=None, deliveries=1, source="t",
                         seq=1)
    assert decode(encode(letter)).payload == letter.payload


def to_bytes(value: Any, *, ascii_only: bool) -> bytes:
    """JSON with NaN/Infinity as Python writes them; lone surrogates as \\u escapes or, when
    not `ascii_only`, as the invalid UTF-8 a careless writer would produce."""
    text = json.dumps(value, ensure_ascii=ascii_only)
    return text.encode("utf-8", "surrogatepass")


@fuzz(4000)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_decode_to_a_message_or_a_message_error(data):
    check(data)


@fuzz(3000)
@given(json_values, st.booleans())
def test_arbitrary_json_values_decode_to_a_message_or_a_message_error(value, ascii_only):
    check(to_bytes(value, ascii_only=ascii_only))


@st.composite
def mutated_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message with one field, at any depth, replaced, removed or added."""
    body = json.loads(json.dumps(draw(st.sampled_from(VALID_BODIES))))
    node = body
    while True:
        key = draw(st.sampled_from(sorted(node)))
        if isinstance(node[key], dict) and node[key] and draw(st.booleans()):
            node = node[key]
            continue
        action = draw(st.sampled_from(["replace", "remove", "add"]))
        if action == "replace":
            node[key] = draw(json_values)
        elif action == "remove":
            del node[key]
        else:
            node[draw(hostile_text)] = draw(json_values)
        return body


@fuzz(3000)
@given(mutated_bodies(), st.booleans())
def test_mutated_valid_messages_decode_to_a_message_or_a_message_error(body, ascii_only):
    check(to_bytes(body, ascii_only=ascii_only))


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_payload_is_refused_with_a_message_error_only(data):
    try:
        message = decode(data)
    except MessageError as exc:
        assert 0 < len(str(exc)) < 1000
    else:  # a valid message of another type: the worker refuses it as a request
        assert message.type is not Subject.REQUEST
    check(data)


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_the_excerpt_of_a_hostile_payload_is_short_safe_text_without_custom_data(data):
    excerpt = redacted_excerpt(data)
    assert len(excerpt) <= 300
    excerpt.encode()
    assert "secret" not in excerpt
