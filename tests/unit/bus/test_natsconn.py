"""The NATS connection: fast failure, bounded waits, idempotent streams."""

from __future__ import annotations

import asyncio
import signal
import socket

import psutil
import pytest
from conftest import async_wait_until

from vmlaunch.bus.connection import (
    EVENTS_STREAM,
    REQUESTS_STREAM,
    NatsSettings,
    NatsUnavailable,
    connect,
    round_trip,
)
from vmlaunch.bus.streams import ensure_streams, ensure_worker_consumer


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_servers_that_all_refuse_fail_at_once_not_after_the_timeout():
    urls = [f"nats://127.0.0.1:{closed_port()}", f"nats://127.0.0.1:{closed_port()}"]
    settings = NatsSettings(servers=urls, connect_timeout=60)
    with pytest.raises(NatsUnavailable, match="refused the connection"):
        await asyncio.wait_for(connect(settings), 10)  # far less than connect_timeout


async def test_a_server_that_never_speaks_nats_fails_after_the_connect_timeout():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"nats://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(NatsUnavailable, match=r"did not answer within 0\.3 s"):
            await connect(NatsSettings(servers=[url], connect_timeout=0.3))


async def test_one_refusing_server_of_two_does_not_stop_the_connection(nats_server):
    urls = [f"nats://127.0.0.1:{closed_port()}", nats_server.url]
    nc = await connect(NatsSettings(servers=urls))
    try:
        assert nc.is_connected
    finally:
        await nc.close()


async def test_streams_and_the_shared_consumer_are_created_idempotently(nats_server):
    nc = await connect(NatsSettings(servers=[nats_server.url]))
    try:
        js = nc.jetstream()
        for _ in range(2):  # whoever starts first creates them; the others find them
            await ensure_streams(js)
            assert await ensure_worker_consumer(js, ack_wait=7) == 7
        requests, events = (await js.stream_info(REQUESTS_STREAM),
                            await js.stream_info(EVENTS_STREAM))
        assert requests.config.retention == "workqueue"
        assert events.config.max_age == 7 * 24 * 3600
    finally:
        await nc.close()


async def test_a_round_trip_that_times_out_leaves_the_connection_alone(nats_server):
    """nats-py's own flush timeout breaks its read loop at the next PONG (a reconnect each
    time a flush was slow); a timed-out `round_trip` must not."""
    nc = await connect(NatsSettings(servers=[nats_server.url]))
    try:
        nats_server.process.send_signal(signal.SIGSTOP)
        try:
            # Stopped for sure before the ping: under load a server still running answers it.
            await async_wait_until(lambda: psutil.Process(nats_server.process.pid).status()
                                   == psutil.STATUS_STOPPED, timeout=10,
                                   message="nats-server to stop")
            with pytest.raises(TimeoutError):
                await round_trip(nc, 0.3)
        finally:
            nats_server.process.send_signal(signal.SIGCONT)
        await round_trip(nc, 5)  # the PONGs of both flushes have come back by now
        await round_trip(nc, 5)
        assert (nc.is_connected, nc.stats["reconnects"]) == (True, 0)
    finally:
        await nc.close()
