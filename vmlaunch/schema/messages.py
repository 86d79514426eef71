"""The versioned message schema shared by the worker, the orchestrator and the legacy poller.

Every message is one envelope (`Message`) whose `type` is also the NATS subject it
travels on, with a typed payload per type. `encode` gives compact UTF-8 JSON;
`decode` refuses anything malformed with a `MessageError` naming the field.

Versioning: `schema` is "azure-vm-launch/MAJOR.MINOR". A different MAJOR is refused.
A newer MINOR may only add optional fields, so a reader of an older minor accepts it
and ignores fields it does not know; at the same or an older minor an unknown field is
an error (it is a typo or a bug, not a newer writer).

Run `python messages.py schema` for the JSON Schema of every message type. The envelope's
own checks and constants are in `envelope.py`, re-exported here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from vmlaunch.schema import typedfields
from vmlaunch.schema.envelope import (  # noqa: F401  (re-exported: the schema's one import)
    EVENT_SUBJECTS,
    MAX_ATTEMPT,
    SCHEMA,
    SCHEMA_MAJOR,
    SCHEMA_MINOR,
    SCHEMA_NAME,
    Subject,
    check_envelope_fields,
    check_schema,
    check_type,
    envelope_schema,
    new_event_id,
    stable_event_id,
    utc_now_ms,
)
from vmlaunch.schema.vmspec import VMSpec
from vmlaunch.schema.vocabulary import STATUS_PHASES
from vmlaunch.schema.wirejson import MessageError, parse_json

# The vocabulary's status phases, as the Literal the strict decoder and the JSON Schema read.
StatusState = Literal[tuple(phase.value for phase in STATUS_PHASES)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class CreateRequest:
    """Create and verify one VM. `spec.custom_data` carries the file's content."""

    spec: VMSpec


@dataclass(frozen=True, kw_only=True)
class Placed:
    """Where an attempt runs or ran: its zone and size (None: the spec's, or not known)."""

    zone: str | None = None
    size: str | None = None


@dataclass(frozen=True)
class Status(Placed):
    """A step of the launch: `state` says which, `detail` says what is being done."""

    state: StatusState
    detail: str


@dataclass(frozen=True)
class Complete(Placed):
    """The VM is ready: its addresses, and the seconds its launch took."""

    public_ip: str
    private_ip: str
    vm_id: str
    duration_seconds: float


@dataclass(frozen=True)
class Failed(Placed):
    """An attempt failed; `final`: the launch has given up (no attempt follows)."""

    error_code: str
    message: str
    retryable: bool
    attempts: int
    final: bool


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
    newer_minor = check_schema(body.get("schema"))
    subject = check_type(body.get("type"))
    check_envelope_fields(body, allow_extra=newer_minor)
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


def json_schemas() -> dict[str, Any]:
    """JSON Schema of the whole envelope for every message type."""
    envelope, required = envelope_schema()
    return {
        subject.value: {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": f"{subject.value} ({SCHEMA})",
            "type": "object",
            "properties": {**envelope, "type": {"const": subject.value},
                           "payload": typedfields.json_schema(cls)},
            "required": [*required, "type", "payload"],
            "additionalProperties": False,
        }
        for subject, cls in PAYLOAD_TYPES.items()
    }
