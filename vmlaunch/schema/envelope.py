"""The message envelope: schema versions, subjects, ids and times, and the checks and JSON
Schema of the envelope's own fields (the payloads are in `messages.py`).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from vmlaunch.schema.wirejson import MessageError

SCHEMA_NAME = "azure-vm-launch"
SCHEMA_MAJOR = 1
SCHEMA_MINOR = 1
SCHEMA = f"{SCHEMA_NAME}/{SCHEMA_MAJOR}.{SCHEMA_MINOR}"
MAX_ATTEMPT = 2**31 - 1
_SCHEMA_RE = re.compile(rf"^{SCHEMA_NAME}/(\d+)\.(\d+)$")
_TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Subject(StrEnum):
    REQUEST = "vm.create.request"
    STATUS = "vm.create.status"
    COMPLETE = "vm.create.complete"
    FAILED = "vm.create.failed"
    SSH_VERIFIED = "vm.ssh.verified"
    CLOUDINIT_COMPLETE = "vm.cloudinit.complete"
    DEADLETTER = "vm.create.deadletter"
    CANCEL = "vm.create.cancel"


# Everything but requests is an event: kept in the events stream as the audit trail.
EVENT_SUBJECTS = [s for s in Subject if s is not Subject.REQUEST]

def utc_now_ms() -> str:
    """UTC time, ISO-8601 with milliseconds and a Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_event_id() -> str:
    return uuid.uuid4().hex


def stable_event_id(*parts: object) -> str:
    """The same parts always give the same id, so a re-published event is a duplicate."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "/".join(map(str, parts))).hex


def check_schema(schema: Any) -> bool:
    """True when the message comes from a newer minor version."""
    match = _SCHEMA_RE.match(schema) if isinstance(schema, str) else None
    if match is None:
        raise MessageError(f"expected '{SCHEMA_NAME}/MAJOR.MINOR', got {schema!r}",
                           field="schema")
    major, minor = int(match[1]), int(match[2])
    if major != SCHEMA_MAJOR:
        raise MessageError(f"unsupported schema version {major}.{minor}; this reader "
                           f"understands {SCHEMA_MAJOR}.x", field="schema")
    return minor > SCHEMA_MINOR


def check_type(value: Any) -> Subject:
    try:
        return Subject(value)
    except ValueError:
        raise MessageError(f"unknown message type {value!r}", field="type") from None


_ENVELOPE_TYPES: dict[str, type] = {
    "schema": str, "type": str, "event_id": str, "deployment_id": str, "vm_name": str,
    "attempt": int, "time": str, "source": str, "payload": dict,
}
# Added in 1.1, so optional: a 1.0 writer's message has none.
_OPTIONAL_ENVELOPE_TYPES: dict[str, type] = {"generation": int}


def check_envelope_fields(body: dict[str, Any], *, allow_extra: bool) -> None:
    for name, kind in {**_ENVELOPE_TYPES, **_OPTIONAL_ENVELOPE_TYPES}.items():
        if name not in body:
            if name in _OPTIONAL_ENVELOPE_TYPES:
                continue
            raise MessageError("missing required field", field=name)
        value = body[name]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise MessageError(f"expected {kind.__name__}, got {type(value).__name__}",
                               field=name)
    extra = sorted(set(body) - set(_ENVELOPE_TYPES) - set(_OPTIONAL_ENVELOPE_TYPES))
    if extra and not allow_extra:
        raise MessageError("unknown field", field=extra[0])
    if not body["event_id"]:
        raise MessageError("must not be empty", field="event_id")
    if not body["deployment_id"]:
        raise MessageError("must not be empty", field="deployment_id")
    for name in ("attempt", "generation"):
        if body.get(name, 0) < 0:
            raise MessageError("must not be negative", field=name)
        if body.get(name, 0) > MAX_ATTEMPT:
            raise MessageError(f"must be at most {MAX_ATTEMPT}", field=name)
    if not _TIME_RE.match(body["time"]):
        raise MessageError("expected UTC ISO-8601 with milliseconds, like "
                           "2026-01-31T12:00:00.000Z", field="time")


def envelope_schema() -> tuple[dict[str, Any], list[str]]:
    """The JSON Schema properties of the envelope's fields (all but `type` and `payload`,
    which depend on the message type) and the names of the required ones."""
    properties = {
        "schema": {"type": "string", "pattern": rf"^{SCHEMA_NAME}/{SCHEMA_MAJOR}\.\d+$"},
        "event_id": {"type": "string", "minLength": 1},
        "deployment_id": {"type": "string", "minLength": 1},
        "vm_name": {"type": "string"},
        "attempt": {"type": "integer", "minimum": 0},
        "generation": {"type": "integer", "minimum": 0},
        "time": {"type": "string", "pattern": _TIME_RE.pattern},
        "source": {"type": "string"},
    }
    return properties, [k for k in properties if k not in _OPTIONAL_ENVELOPE_TYPES]
