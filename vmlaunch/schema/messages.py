"""The versioned message schema shared by the worker, the orchestrator and the legacy poller.

Every message is one envelope (`Message`) whose `type` is also the NATS subject it
travels on, with a typed payload per type. `encode` gives compact UTF-8 JSON;
`decode` refuses anything malformed with a `MessageError` naming the field.

Versioning: `schema` is "azure-vm-launch/MAJOR.MINOR". A different MAJOR is refused.
A newer MINOR may only add optional fields, so a reader of an older minor accepts it
and ignores fields it does not know; at the same or an older minor an unknown field is
an error (it is a typo or a bug, not a newer writer).

Run `python messages.py schema` for the JSON Schema of every message type.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from vmlaunch.schema import typedfields
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.schema.vocabulary import STATUS_PHASES
from vmlaunch.schema.wirejson import MessageError, parse_json

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

# The vocabulary's status phases, as the Literal the strict decoder and the JSON Schema read.
StatusState = Literal[tuple(phase.value for phase in STATUS_PHASES)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class CreateRequest:
    """Create and verify one VM. `spec.custom_data` carries the file's content."""

    spec: VMSpec


@dataclass(frozen=True)
class Status:
    state: StatusState
    detail: str
    zone: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class Complete:
    public_ip: str
    private_ip: str
    vm_id: str
    duration_seconds: float
    zone: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class Failed:
    error_code: str
    message: str
    retryable: bool
    attempts: int
    final: bool
    zone: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class SshVerified:
    ip: str
    port: int
    user: str


@dataclass(frozen=True)
class CloudInitComplete:
    result: Literal["done", "degraded", "error"]
    detail: str


@dataclass(frozen=True)
class DeadLetter:
    """A request that could not be processed. `excerpt` never holds custom data."""

    reason: str
    subject: str
    deliveries: int
    excerpt: str


@dataclass(frozen=True)
class Cancel:
    """Stop work for one VM, or for the whole deployment when `vm_name` is empty.
    `owner`: who drives the VM from now on (e.g. "legacy-poller" after a fallback)."""

    reason: str
    owner: str | None = None


Payload = (
    CreateRequest | Status | Complete | Failed | SshVerified | CloudInitComplete | DeadLetter
    | Cancel
)

PAYLOAD_TYPES: dict[Subject, type] = {
    Subject.REQUEST: CreateRequest,
    Subject.STATUS: Status,
    Subject.COMPLETE: Complete,
    Subject.FAILED: Failed,
    Subject.SSH_VERIFIED: SshVerified,
    Subject.CLOUDINIT_COMPLETE: CloudInitComplete,
    Subject.DEADLETTER: DeadLetter,
    Subject.CANCEL: Cancel,
}
_SUBJECT_OF = {cls: subject for subject, cls in PAYLOAD_TYPES.items()}


def utc_now_ms() -> str:
    """UTC time, ISO-8601 with milliseconds and a Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_event_id() -> str:
    return uuid.uuid4().hex


def stable_event_id(*parts: object) -> str:
    """The same parts always give the same id, so a re-published event is a duplicate."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "/".join(map(str, parts))).hex


@dataclass(frozen=True)
class Message:
    """The envelope. `type` is the subject; `vm_name` is empty only for deployment-wide
    cancels and for dead letters of requests that could not be read. `generation` is the
    request's (its events carry it); 0: not known (a 1.0 writer)."""

    deployment_id: str
    vm_name: str
    payload: Payload
    attempt: int = 0
    generation: int = 0
    source: str = ""
    event_id: str = field(default_factory=new_event_id)
    time: str = field(default_factory=utc_now_ms)
    schema: str = SCHEMA

    @property
    def type(self) -> Subject:
        return _SUBJECT_OF[type(self.payload)]

    @property
    def subject(self) -> str:
        return self.type.value


def encode(message: Message) -> bytes:
    body = {
        "schema": message.schema,
        "type": message.type.value,
        "event_id": message.event_id,
        "deployment_id": message.deployment_id,
        "vm_name": message.vm_name,
        "attempt": message.attempt,
        "generation": message.generation,
        "time": message.time,
        "source": message.source,
        "payload": dataclasses.asdict(message.payload),
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode(data: bytes) -> Message:
    """Parse and check one message; raise MessageError naming the first bad field.

    Whatever the bytes, nothing but MessageError escapes: a worker must be able to settle
    every request it fetched.
    """
    body = parse_json(data)
    if not isinstance(body, dict):
        raise MessageError("not a JSON object")
    newer_minor = _check_schema(body.get("schema"))
    subject = _check_type(body.get("type"))
    _check_envelope_fields(body, allow_extra=newer_minor)
    try:
        payload = typedfields.from_dict(
            PAYLOAD_TYPES[subject], body["payload"], where="payload", allow_extra=newer_minor
        )
    except typedfields.FieldErrors as exc:
        field_name = exc.problems[0].split(":", 1)[0]
        raise MessageError("; ".join(exc.problems), field=field_name) from None
    message = Message(
        deployment_id=body["deployment_id"], vm_name=body["vm_name"], payload=payload,
        attempt=body["attempt"], generation=body.get("generation", 0), source=body["source"],
        event_id=body["event_id"], time=body["time"], schema=body["schema"],
    )
    try:  # JSON allows "\ud800", which no UTF-8 writer (our encode, the events file) can
        encode(message)
    except UnicodeEncodeError:
        raise MessageError("holds text that is not valid Unicode (a lone surrogate)") from None
    return message


def _check_schema(schema: Any) -> bool:
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


def _check_type(value: Any) -> Subject:
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


def _check_envelope_fields(body: dict[str, Any], *, allow_extra: bool) -> None:
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


def json_schemas() -> dict[str, Any]:
    """JSON Schema of the whole envelope for every message type."""
    envelope = {
        "schema": {"type": "string", "pattern": rf"^{SCHEMA_NAME}/{SCHEMA_MAJOR}\.\d+$"},
        "event_id": {"type": "string", "minLength": 1},
        "deployment_id": {"type": "string", "minLength": 1},
        "vm_name": {"type": "string"},
        "attempt": {"type": "integer", "minimum": 0},
        "generation": {"type": "integer", "minimum": 0},
        "time": {"type": "string", "pattern": _TIME_RE.pattern},
        "source": {"type": "string"},
    }
    return {
        subject.value: {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"{subject.value} ({SCHEMA})",
            "type": "object",
            "properties": {**envelope, "type": {"const": subject.value},
                           "payload": typedfields.json_schema(cls)},
            "required": [*(k for k in envelope if k not in _OPTIONAL_ENVELOPE_TYPES), "type",
                         "payload"],
            "additionalProperties": False,
        }
        for subject, cls in PAYLOAD_TYPES.items()
    }
