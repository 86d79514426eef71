"""The write budget's arithmetic: windows from the command line, the ledger's waits, which
failures are throttles. Pure functions of explicit times; no clock, no sleeping."""

from __future__ import annotations

import json

import pytest

from vmlaunch.azure.failures import classify
from vmlaunch.azure.writebudget import (
    DEFAULT_WINDOWS,
    LONGEST_PAUSE,
    LONGEST_WRITE,
    Ledger,
    Window,
    parse_windows,
    throttle_pause,
)

TWO = (Window(2, 10.0), Window(3, 100.0))
ONE = (Window(1, 10.0),)


def made(ledger: Ledger, windows: tuple[Window, ...], now: float) -> None:
    """A write admitted at `now` whose process ended at once."""
    ledger.add(windows, now)
    assert ledger.moved(now, now)


def test_windows_are_read_from_repeated_and_comma_separated_options():
    assert parse_windows(("240/180,1200/1800",)) == parse_windows(("240/180", "1200/1800")) == (
        Window(240, 180.0), Window(1200, 1800.0))
    assert str(Window(10, 2.0)) == "10/2"


@pytest.mark.parametrize("text", ["240", "0/180", "240/0", "x/1", "240/-1", "240/inf", ""])
def test_a_window_that_is_not_count_slash_seconds_is_refused(text):
    with pytest.raises(ValueError):
        parse_windows((text,))


def test_a_write_waits_until_the_oldest_write_of_a_full_window_has_left_it():
    ledger = Ledger()
    for now in (0.0, 1.0):
        assert ledger.wait(TWO, now) == 0.0
        made(ledger, TWO, now)
    assert ledger.wait(TWO, 4.0) == 6.0  # 2 in 10 s: the write at 0 leaves at 10
    made(ledger, TWO, 10.0)
    assert ledger.wait(TWO, 11.0) == 89.0  # 3 in 100 s: the write at 0 leaves at 100


def test_the_ledger_keeps_only_what_its_windows_need():
    ledger = Ledger()
    for now in range(10):
        made(ledger, TWO, float(now))
    ledger.add(TWO, 10.0)  # an admission prunes
    assert (ledger.times, ledger.pending) == ([7.0, 8.0, 9.0], [10.0])
    made(ledger, TWO, 800.0)  # the write at 10, never made, could be no later than 610
    assert (ledger.times, ledger.pending) == ([800.0], [])


def test_a_write_counts_from_when_its_process_ended_once_that_is_known():
    ledger = Ledger()
    ledger.add(TWO, 0.0)
    made(ledger, TWO, 1.0)
    # Admitted at 0, its `az` started late: Azure had the PUT by 3 at the latest.
    assert ledger.moved(0.0, 3.0)
    assert (ledger.times, ledger.pending) == ([1.0, 3.0], [])
    assert ledger.wait(TWO, 4.0) == 7.0  # the write at 1 leaves at 11, not the one at 0
    assert not ledger.moved(0.0, 5.0)  # counted once: nothing left at 0 to move


def test_a_write_in_flight_counts_as_made_now_until_its_process_ends():
    """Azure may take its PUT at any moment: counted from its admission, the write would
    leave the window at 10 while a PUT made later is still in Azure's."""
    ledger = Ledger()
    ledger.add(ONE, 0.0)
    assert ledger.wait(ONE, 5.0) == 10.0  # at the earliest: its PUT may come now
    assert ledger.wait(ONE, 10.0) == 10.0  # counted from its admission it would go now
    assert ledger.moved(0.0, 12.0)
    assert ledger.wait(ONE, 12.5) == 9.5


def test_a_write_whose_process_never_ended_counts_as_made_when_it_could_last_have_been():
    """Its worker died (and its `az` with it): no PUT after LONGEST_WRITE."""
    ledger = Ledger()
    ledger.add(ONE, 0.0)
    last = LONGEST_WRITE + 10.0  # one window after the last moment it could have been made
    assert ledger.wait(ONE, last - 0.1) > 0 and ledger.wait(ONE, last) == 0.0
    ledger.add(ONE, last)
    assert ledger.pending == [last]  # the dead one is no longer needed by any window


def test_a_pause_holds_every_write_and_only_ever_grows():
    ledger = Ledger()
    ledger.pause(50.0)
    ledger.pause(20.0)
    assert (ledger.wait(TWO, 10.0), ledger.wait(TWO, 60.0)) == (40.0, 0.0)


def test_a_ledger_survives_its_own_encoding():
    ledger = Ledger([1.5, 2.25], 9.0, [3.5])
    assert Ledger.decode(ledger.encode(), now=10.0) == ledger
    earlier = b'{"v": 1, "times": [1.5], "not_before": 0}'  # before writes were pending
    assert Ledger.decode(earlier, now=10.0) == Ledger([1.5], 0.0, [])
    version_1 = b'{"v": 1, "times": [1.5, 2.25], "not_before": 9.0, "pending": [3.5]}'
    assert Ledger.decode(version_1, now=10.0) == ledger


def test_a_ledger_keeps_each_time_to_the_millisecond_and_finds_its_pending_ones_again():
    now = 1_796_314_047.1894
    admitted = [round(now - i * 0.0371, 3) for i in range(300)]
    ledger = Ledger(sorted(round(now - 100 + i * 0.0373, 3) for i in range(200)), now,
                    sorted(admitted))
    decoded = Ledger.decode(ledger.encode(), now)
    assert decoded == Ledger(ledger.times, round(now, 3), ledger.pending)
    assert all(decoded.moved(was, now) for was in admitted)  # found by equality


def test_a_full_ledger_is_a_few_bytes_per_write():
    """Every admission reads and writes the whole ledger (twice per create): 1,200 writes
    of a 30-minute window, one every 1.5 s, were ~20 KB as seconds with decimals."""
    now = 1_796_314_047.0
    ledger = Ledger([now - 1800 + i * 1.5 for i in range(1200)], now, [now])
    assert len(ledger.encode()) < 7 * 1200


@pytest.mark.parametrize("data", [
    b"", b"\xff\xfe", b"[]", b"[" * 100_000, b'{"times": [], "not_before": 0}',
    b'{"v": 1, "times": "1,2", "not_before": 0}', b'{"v": 1, "times": [true], "not_before": 0}',
    b'{"v": 1, "times": [], "not_before": null}',
    b'{"v": 1, "times": [], "not_before": 0, "pending": [null]}',
    json.dumps({"v": 1, "times": [], "not_before": 10 + LONGEST_PAUSE + 1}).encode(),
    b'{"v": 2, "times": [1.5], "not_before": 0}', b'{"v": 2, "times": [3, -1], "not_before": 0}',
    b'{"v": 2, "times": [true], "not_before": 0}', b'{"v": 2, "times": "1", "not_before": 0}',
    b'{"v": 2, "times": [], "not_before": 0, "pending": [1000, 0.5]}',
    json.dumps({"v": 2, "times": [(10 + LONGEST_PAUSE + 1) * 1000], "not_before": 0}).encode(),
    b'{"v": 3, "times": [], "not_before": 0}', b'{"v": 2.0, "times": [], "not_before": 0}',
    b'{"v": true, "times": [], "not_before": 0}',
    b'{"v": 2, "times": [' + b"9" * 400 + b'], "not_before": 0}'])
def test_a_value_that_is_not_a_plausible_ledger_is_an_error(data):
    with pytest.raises(ValueError):
        Ledger.decode(data, now=10.0)


def test_throttles_pause_for_their_retry_after_other_failures_not_at_all():
    arm = classify(1, "ERROR: (SubscriptionRequestsThrottled) Number of 'write' requests "
                      "exceeded the limit. Please try again after '17' seconds.")
    compute = classify(1, "ERROR: (TooManyRequests) The request is being throttled as the "
                          "limit has been reached for operation type - PutVM3Min.")
    capacity = classify(1, "ERROR: (ZonalAllocationFailed) no capacity")
    assert (throttle_pause(arm, DEFAULT_WINDOWS), throttle_pause(compute, DEFAULT_WINDOWS)) == (
        17.0, 15.0)  # Compute names none: a twelfth of PutVM3Min's 3 minutes
    # A budget in another time (the simulator's, scaled) pauses in proportion.
    assert throttle_pause(compute, (Window(240, 9.0), Window(1200, 90.0))) == 0.75
    assert throttle_pause(capacity, DEFAULT_WINDOWS) is None
    assert throttle_pause(None, DEFAULT_WINDOWS) is None
