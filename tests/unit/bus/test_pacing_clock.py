"""The shared write budget's clock against a real nats-server: a worker whose own ledger
write was replaced before it could read the server's timestamp keeps the fleet's budget.

Found in CI: with three workers starting at once, one learned of its write's timestamp
after another worker's write had purged it (the bucket keeps one revision), read that as
"the bucket cannot be used", and paced itself alone for 10 s: 14 PutVM 429s."""

from __future__ import annotations

import nats

from vmlaunch.azure.writebudget import Window
from vmlaunch.bus.pacing import KEY, SharedBudget
from vmlaunch.bus.streams import PACING_BUCKET, ensure_streams


async def test_a_write_replaced_before_its_timestamp_was_read_keeps_the_shared_budget(
        nats_server):
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        bucket = await js.key_value(PACING_BUCKET)
        first = await bucket.put(KEY, b'{"v": 1, "times": [], "not_before": 0}')
        await bucket.put(KEY, b'{"v": 1, "times": [], "not_before": 0}')  # purges `first`
        budget = SharedBudget(js, (Window(10, 60.0),))
        await budget._learn_clock(first, 0.0)  # as _write does right after its write
        admission = await budget.admit()
    finally:
        await nc.close()
    assert admission.shared is not None  # admitted by the fleet's ledger, not alone
