"""Hostile request payloads: what anyone able to publish on `vm.create.request` could send.

Each entry is an id and the raw bytes. `PUBLISHABLE` are those the requests stream stores
(at most 256 KiB + 4 KiB); the others only reach `decode` from elsewhere.
"""

from __future__ import annotations

import json
from typing import Any

from vmlaunch.schema.messages import CreateRequest, Message, Status, encode
from vmlaunch.schema.vmspec import VMSpec

STREAM_LIMIT = 256 * 1024 + 4096
_SPEC = VMSpec(name="vm-hostile", resource_group="rg-test", image="Ubuntu2204",
               custom_data="#cloud-config\nsecret-in-custom-data")


def request_body(**spec_fields: Any) -> dict[str, Any]:
    """A valid request as a JSON body, with spec fields replaced."""
    body = json.loads(encode(Message(deployment_id="dep-hostile", vm_name="vm-hostile",
                                     payload=CreateRequest(spec=_SPEC), source="attacker")))
    body["payload"]["spec"].update(spec_fields)
    return body


def raw(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def _spliced(body: dict[str, Any], marker: str, text: str) -> bytes:
    """The body's JSON with the string "marker" replaced by raw JSON text (numbers and
    constants json.dumps would not write)."""
    return raw(body).replace(f'"{marker}"'.encode(), text.encode())


def _deep_in_spec(depth: int) -> bytes:
    return _spliced(request_body(tags="@"), "@", "[" * depth + "]" * depth)


HOSTILE: dict[str, bytes] = {
    "empty": b"",
    "json-null": b"null",
    "json-number": b"42",
    "json-string": b'"vm.create.request"',
    "json-list": b"[]",
    "bom-prefix": b"\xef\xbb\xbf" + raw(request_body()),
    "invalid-utf8": raw(request_body()).replace(b"vm-hostile", b"vm-\xff\xfe", 1),
    "truncated": raw(request_body())[:-7],
    "deep-array-top-level": b"[" * 100_000 + b"]" * 100_000,
    "deep-object-in-spec": _deep_in_spec(50_000),
    "deep-just-past-recursion-limit": _deep_in_spec(1_100),
    "deep-just-below-recursion-limit": _deep_in_spec(900),
    "deep-tag-value": _spliced(request_body(tags={"a": "@"}), "@", "[" * 900 + "]" * 900),
    "5000-digit-integer-attempt": _spliced({**request_body(), "attempt": "@"}, "@", "9" * 5000),
    "5000-digit-integer-in-spec": _spliced(request_body(max_attempts="@"), "@", "7" * 5000),
    "integer-beyond-a-double": _spliced(request_body(create_timeout="@"), "@", "1" + "0" * 400),
    "integer-beyond-64-bits": raw(request_body(ssh_port=2**70)),
    "float-overflow-1e999": _spliced(request_body(create_timeout="@"), "@", "1e999"),
    "nan": _spliced(request_body(retry_backoff="@"), "@", "NaN"),
    "infinity": _spliced(request_body(cloud_init_timeout="@"), "@", "Infinity"),
    "minus-infinity": _spliced(request_body(retry_backoff="@"), "@", "-Infinity"),
    "lone-surrogate-in-value": _spliced(request_body(name="@"), "@", '"vm\\ud800"'),
    "lone-surrogate-in-key": _spliced(request_body(tags="@"), "@", '{"\\udc00": "x"}'),
    "lone-surrogate-in-custom-data": _spliced(request_body(custom_data="@"), "@",
                                              '"secret\\udfff"'),
    "payload-is-a-list": raw({**request_body(), "payload": []}),
    "spec-is-a-string": raw({**request_body(), "payload": {"spec": "vm"}}),
    "tags-is-a-list": raw(request_body(tags=["a", "b"])),
    "zones-is-a-mapping": raw(request_body(fallback_zones={"1": 2})),
    "name-is-a-number": raw(request_body(name=5)),
    "bool-for-integer": raw(request_body(ssh_port=True)),
    "ten-thousand-unknown-fields": raw(request_body(**{f"x{i}": i for i in range(10_000)})),
    "a-status-on-the-request-subject": encode(Message(
        deployment_id="dep-hostile", vm_name="vm-hostile",
        payload=Status(state="accepted", detail="not a request"))),
    "megabytes-of-text": b'"' + b"a" * 3_000_000 + b'"',
    "megabytes-of-nesting": b"[" * 2_000_000 + b"]" * 2_000_000,
}
PUBLISHABLE = {name: data for name, data in HOSTILE.items() if len(data) <= STREAM_LIMIT}
