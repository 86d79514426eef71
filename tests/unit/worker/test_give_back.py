"""A worker's graceful stop gives its unfinished requests back, but only those it still
holds: a nak of a request whose lease lapsed (the server may have redelivered it meanwhile)
would hand it to a third worker while the second still drives the VM, and both would create
it. Either way the delivery ended without a failure: it is recorded as released, so that
it does not count towards the dead-letter limit. Real nats-server, the workers' real stream
and consumer; JobRunner as the worker builds it, without a worker process around it.
"""

from __future__ import annotations

import collections

import nats
import pytest

from vmlaunch.azure.azcli import AzCli
from vmlaunch.bus.connection import NatsSettings
from vmlaunch.bus.publish import CancelMemory, Publisher
from vmlaunch.bus.streams import RELEASES_BUCKET, worker_subscription
from vmlaunch.lifecycle.lease import Lease
from vmlaunch.lifecycle.tracked import Tracked
from vmlaunch.worker.jobs import Job, JobRunner

pytestmark = pytest.mark.timeout(60)
ACK_WAIT = 30.0  # far longer than the test: only a nak can bring the request back


@pytest.fixture
async def bus(nats_server):
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    subscription, ack_wait = await worker_subscription(
        js, NatsSettings(servers=[nats_server.url]), ack_wait=ACK_WAIT)
    az = AzCli()
    runner = JobRunner(nc, Publisher(nc, js), releases=await js.key_value(RELEASES_BUCKET),
                       az=az, observer=Tracked(az), cancels=CancelMemory(),
                       counts=collections.Counter(), worker_id="w-test", max_deliveries=5,
                       private_key=None, ack_wait=ack_wait)
    await js.publish("vm.create.request", b"{}")
    yield runner, subscription
    await nc.close()


async def delivered_again(subscription) -> bool:
    try:
        await subscription.fetch(1, timeout=2)
    except nats.errors.TimeoutError:
        return False
    return True


async def released(runner: JobRunner, msg) -> int:
    """The deliveries of `msg`'s request recorded as ended without a failure."""
    return await runner._releases.count(msg.metadata.sequence.stream)


async def test_a_request_still_held_is_given_back_at_once(bus):
    runner, subscription = bus
    (msg,) = await subscription.fetch(1, timeout=5)
    await runner.give_back(Job(msg, deliveries=1, lease=Lease(ACK_WAIT)))
    assert await delivered_again(subscription)
    assert await released(runner, msg) == 1


async def test_a_request_whose_lease_lapsed_is_not_given_back(bus):
    runner, subscription = bus
    (msg,) = await subscription.fetch(1, timeout=5)
    lapsed = Lease(0.0)
    assert not lapsed.held()
    await runner.give_back(Job(msg, deliveries=1, lease=lapsed))
    assert not await delivered_again(subscription)  # back only after AckWait, by the server
    assert await released(runner, msg) == 1  # yet it ended without a failure: not counted


async def test_a_request_delivered_before_a_reconnect_is_not_given_back(bus):
    """A restarted nats-server redelivers what was pending although our heartbeats went on
    after the reconnect: the chaos test saw a worker's stop nak such a delivery while a
    second worker drove the VM, and a third created it again."""
    runner, subscription = bus
    (msg,) = await subscription.fetch(1, timeout=5)
    before = runner._nc.stats["reconnects"] - 1  # fetched on the connection before this one
    await runner.give_back(Job(msg, deliveries=1, lease=Lease(ACK_WAIT), reconnects=before))
    assert not await delivered_again(subscription)  # back only after AckWait, by the server
    assert await released(runner, msg) == 1  # yet it ended without a failure: not counted
