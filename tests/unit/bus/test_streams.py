"""Streams and the releases bucket: created when missing, never changed unasked.

An "admin" creates streams with settings of their own first; the tool (a library call,
and a real `serve` process) must leave them exactly as they are unless `--replicas` asks
for other replicas. A real 3-node cluster is tested elsewhere; on one server a request
for R3 shows that the change is attempted (and refused by the server) only when asked.
"""

from __future__ import annotations

import subprocess

import nats
import pytest
from conftest import PYTHON, REPO, async_wait_until
from nats.js.api import RetentionPolicy, StreamConfig
from nats.js.errors import ServerError
from workerkit import running

from vmlaunch.bus.connection import EVENTS_STREAM, REQUESTS_STREAM
from vmlaunch.bus.streams import RELEASES_BUCKET, RELEASES_STREAM, StreamMismatch, ensure_streams

pytestmark = pytest.mark.timeout(60)

EVENT_SUBJECTS = ["vm.create.status", "vm.create.complete", "vm.create.failed",
                  "vm.ssh.verified", "vm.cloudinit.complete", "vm.create.deadletter",
                  "vm.create.cancel"]
ADMIN_STREAMS = [  # the subjects the tool needs, and other settings of the admin's own
    StreamConfig(name=REQUESTS_STREAM, subjects=["vm.create.request"],
                 retention=RetentionPolicy.WORK_QUEUE, duplicate_window=60.0,
                 max_msg_size=128 * 1024, description="made by an admin"),
    StreamConfig(name=EVENTS_STREAM, subjects=[*EVENT_SUBJECTS, "vm.extra.>"],
                 max_age=3600.0, duplicate_window=30.0, description="made by an admin"),
]


@pytest.fixture
async def js(nats_server):
    nc = await nats.connect(nats_server.url)
    yield nc.jetstream()
    await nc.close()


async def configs(js) -> dict[str, StreamConfig]:
    return {name: (await js.stream_info(name)).config
            for name in (REQUESTS_STREAM, EVENTS_STREAM)}


async def admin_streams(js) -> dict[str, StreamConfig]:
    for config in ADMIN_STREAMS:
        await js.add_stream(config)
    return await configs(js)


async def test_missing_streams_and_the_releases_bucket_are_created_r1(js):
    await ensure_streams(js)
    for name in (REQUESTS_STREAM, EVENTS_STREAM, RELEASES_STREAM):
        assert (await js.stream_info(name)).config.num_replicas == 1
    releases = await js.key_value(RELEASES_BUCKET)
    await releases.put("17", b"2")
    assert (await releases.get("17")).value == b"2"


async def test_existing_streams_change_only_when_other_replicas_are_asked_for(js):
    before = await admin_streams(js)
    await ensure_streams(js)
    await ensure_streams(js, replicas=1)  # asked for what they already have: no change
    assert await configs(js) == before
    with pytest.raises(ServerError, match="replicas > 1 not supported"):
        await ensure_streams(js, replicas=3)  # attempted, and refused by a single server
    assert await configs(js) == before


async def test_a_stream_this_tool_cannot_use_is_an_error_not_overwritten(js):
    await js.add_stream(name=REQUESTS_STREAM, subjects=["vm.create.request"],
                        retention=RetentionPolicy.LIMITS)
    before = (await js.stream_info(REQUESTS_STREAM)).config
    with pytest.raises(StreamMismatch, match="retention is limits, not workqueue"):
        await ensure_streams(js)
    assert (await js.stream_info(REQUESTS_STREAM)).config == before


async def test_a_worker_started_without_replicas_leaves_an_admins_streams_alone(
        js, nats_server, az_sim, tmp_path):
    before = await admin_streams(js)
    async with running(nats_server.url, az_sim, tmp_path) as w:
        w.start("w1")
        await async_wait_until(lambda: "serving vm.create.request" in w.log("w1"),
                               timeout=20, message="the worker to serve")
        await js.key_value(RELEASES_BUCKET)  # it made what was missing
        assert await configs(js) == before


@pytest.mark.parametrize("command", ["serve", "launch"])
def test_serve_and_launch_take_replicas(command):
    done = subprocess.run([PYTHON, str(REPO / "vm_launcher.py"), command, "--help"],
                          capture_output=True, text=True, timeout=30, check=True)
    assert "--replicas" in done.stdout
