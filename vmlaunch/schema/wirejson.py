"""Raw bytes from the bus, read safely: JSON parsing, excerpts and error texts.

Anything may arrive on a subject: invalid UTF-8, megabytes, deep nesting, numbers of
thousands of digits, NaN, lone surrogates. Everything here refuses such input with
`MessageError` (or, for excerpts, shows a safe text) instead of raising something a
worker would not expect, so that every fetched request can be settled.
"""

from __future__ import annotations

import json
import math
from typing import Any

from vmlaunch.errors import ExitCode, SchemaError

MAX_MESSAGE_BYTES = 256 * 1024


class MessageError(SchemaError, ValueError, exit_code=ExitCode.BAD_INPUT):
    """A message that cannot be accepted; `field` names where the problem is."""

    def __init__(self, reason: str, *, field: str = "") -> None:
        # The text is made safe: it may quote hostile input and ends up in dead letters.
        reason, field = safe_text(reason), safe_text(field)
        prefixed = not field or reason.startswith(field)
        super().__init__(reason if prefixed else f"{field}: {reason}")
        self.field = field
        self.reason = reason


def safe_text(text: str, limit: int = 500) -> str:
    """`text` cut to `limit` characters, lone surrogates escaped: always encodable."""
    cut = text if len(text) <= limit else text[:limit] + "..."
    return cut.encode("utf-8", "backslashreplace").decode("utf-8")


def parse_json(data: bytes) -> Any:
    """The JSON value of raw bytes of at most MAX_MESSAGE_BYTES, or MessageError: invalid
    UTF-8, NaN/Infinity, numbers beyond a double or of thousands of digits, and nesting
    deeper than Python's recursion limit are all refused."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message is {len(data)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        return json.loads(bytes(data).decode("utf-8"), parse_constant=_refuse_constant,
                          parse_float=_finite_float)
    except UnicodeDecodeError as exc:
        raise MessageError(f"not JSON (not UTF-8: {exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise MessageError("not JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, and the number limits
        raise MessageError(f"not JSON ({exc})") from None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def redacted_excerpt(data: bytes, limit: int = 300) -> str:
    """A short, safe excerpt of a raw message: custom data is never shown (any value named
    `custom_data`, at any depth), and the text is valid Unicode whatever the bytes."""
    try:
        body = parse_json(data)
        _redact(body)
        text = json.dumps(body, separators=(",", ":"))
    except (MessageError, RecursionError):
        # \u escapes could spell custom_data in a way this byte search does not see.
        if b"custom_data" in data or b"\\u" in data:
            return "<unreadable message that may hold custom_data; content withheld>"
        text = data[:limit].decode("ascii", errors="replace")
    return text[:limit]


def _redact(body: Any) -> None:
    """Replace every `custom_data` value in a parsed message (a loop: no recursion limit)."""
    todo = [body]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            if "custom_data" in node and node["custom_data"] is not None:
                value = node["custom_data"]
                size = f"{len(value)} characters " if isinstance(value, str) else ""
                node["custom_data"] = f"<{size}redacted>"
            todo.extend(v for k, v in node.items() if k != "custom_data")
        elif isinstance(node, list):
            todo.extend(node)
