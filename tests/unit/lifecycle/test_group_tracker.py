"""A group's listings end with their readers: none starts once nobody waits (a listing
nobody reads, which a close would then wait for or kill half way)."""

from __future__ import annotations

import asyncio
import time

import pytest

from vmlaunch.azure.azcli import AzResult
from vmlaunch.lifecycle.tracked import GroupTracker

pytestmark = pytest.mark.timeout(30)


class Listings:
    """A fetch that takes `seconds` and records when each listing started and ended."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.started, self.ended = seconds, 0, 0

    async def __call__(self) -> AzResult:
        self.started += 1
        await asyncio.sleep(self.seconds)
        self.ended += 1
        return AzResult(argv=["az"], exit_code=0, stdout="[]", stderr="", duration=0.0,
                        data=[])


async def test_no_listing_starts_once_its_readers_left_during_the_interval() -> None:
    listings = Listings(0.05)
    tracker = GroupTracker(listings, lambda item: item.get("name"), what="test",
                           interval=1.0)
    await tracker.read("vm-1")  # the first listing; the next may start 1 s after it
    reader = asyncio.create_task(tracker.read("vm-1"))
    await asyncio.sleep(0.3)
    reader.cancel()  # the VM's lifecycle ended (or was stopped) during the interval
    await asyncio.sleep(1.0)
    assert listings.started == 1
    started = time.monotonic()
    await tracker.close()
    assert time.monotonic() - started < 0.5
