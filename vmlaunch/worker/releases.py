"""How often each request ended without a failure, in the KV bucket `VM_RELEASES`.

The dead-letter limit counts failed deliveries, not deliveries: a delivery that ended
without a failure (given back on a graceful stop, redelivered to its holder while the work
went on, or given up by a holder whose lease lapsed) is recorded here (key: the request's
stream sequence) and is not counted. What is left is deliveries whose holder died or
crashed: the evidence of a poison request.
"""

from __future__ import annotations

import logging

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from vmlaunch.bus.publish import NATS_ERRORS

log = logging.getLogger("worker")  # these lines are the worker's, as operators know them

RECORD_TRIES = 5  # compare-and-set rounds when two workers record a release at once


class Releases:
    """The release counts of one stream's requests, shared by every worker."""

    def __init__(self, bucket: KeyValue) -> None:
        self._bucket = bucket

    async def record(self, seq: int) -> None:
        """Count one delivery of request `seq` that ended without a failure. A
        compare-and-set, so that two workers recording at once both count."""
        for _ in range(RECORD_TRIES):
            try:
                try:
                    entry = await self._bucket.get(str(seq))
                except KeyNotFoundError:
                    await self._bucket.create(str(seq), b"1")
                    return
                await self._bucket.update(str(seq), str(_count(entry.value) + 1).encode(),
                                          last=entry.revision)
                return
            except KeyWrongLastSequenceError:
                continue  # another worker recorded one in between: count again on top
            except NATS_ERRORS as exc:
                log.warning("could not record the release of request %s (%s); this "
                            "delivery counts towards its limit", seq, type(exc).__name__)
                return
        log.warning("could not record the release of request %s (%d conflicts in a row); "
                    "this delivery counts towards its limit", seq, RECORD_TRIES)

    async def count(self, seq: int) -> int:
        """How often request `seq` ended without a failure (0 when unknown)."""
        try:
            entry = await self._bucket.get(str(seq))
        except KeyNotFoundError:
            return 0
        except NATS_ERRORS as exc:  # count every delivery, as if nothing was released
            log.warning("could not read the releases of request %s (%s)", seq,
                        type(exc).__name__)
            return 0
        return _count(entry.value)


def _count(value: bytes | None) -> int:
    text = (value or b"").decode(errors="replace")
    return int(text) if text.isdigit() and len(text) < 10 else 0
