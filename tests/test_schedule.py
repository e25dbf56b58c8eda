"""Periodic jobs (`[[schedule]]`): tick arithmetic and the checks of each entry.

The real worker processes running schedules are in tests/e2e/test_schedules.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from workqueue.config import build
from workqueue.errors import ConfigError
from workqueue.schedule import Schedule, parse_schedules

# -- ticks ------------------------------------------------------------------------------------

T0 = 1_700_000_000.0  # an instant that is a multiple of 1, 2, 5 and 10 s and of 5 minutes (UTC)


@pytest.mark.parametrize(
    ("every", "at", "expected_next", "expected_previous"),
    [
        (1.0, T0, T0 + 1, T0),  # on a tick: next is strictly after, previous is the tick itself
        (1.0, T0 + 0.25, T0 + 1, T0),
        (1.0, T0 + 0.999, T0 + 1, T0),
        (2.0, T0 + 1, T0 + 2, T0),
        (2.0, T0 + 1.999, T0 + 2, T0),
        (2.0, T0 + 2, T0 + 4, T0 + 2),
        (10.0, T0 + 3, T0 + 10, T0),
        (7.0, 0.0, 7.0, 0.0),  # aligned to multiples since the epoch, not to when a worker started
        (7.0, 20.0, 21.0, 14.0),
        (7.0, 21.0, 28.0, 21.0),
        (0.5, T0 + 0.75, T0 + 1.0, T0 + 0.5),
        (3600.0, T0 + 1, 1_700_002_800.0, 1_699_999_200.0),
    ],
)
def test_every_ticks_are_multiples_since_the_epoch(every: float, at: float, expected_next: float,
                                                    expected_previous: float) -> None:
    s = Schedule(name="s", type="record", every=every)
    assert s.next_tick(at) == expected_next
    assert s.previous_tick(at) == expected_previous
    assert s.next_tick(at) > at >= s.previous_tick(at)
    assert s.period == every


def test_every_ticks_from_any_instant_are_consecutive_multiples() -> None:
    s = Schedule(name="s", type="record", every=2.0)
    tick = s.next_tick(T0 + 0.3)
    seen = [tick]
    for _ in range(5):
        tick = s.next_tick(tick)
        seen.append(tick)
    assert seen == [T0 + 2 * k for k in range(1, 7)]
    assert all(s.previous_tick(t) == t for t in seen)


@pytest.mark.parametrize(
    ("at", "expected_next", "expected_previous"),
    [
        (T0, T0 + 100, T0 - 200),  # T0 is 22:13:20 UTC: the 5-minute marks are :10 and :15
        (T0 - 200, T0 + 100, T0 - 200),  # on a tick
        (T0 - 200.5, T0 - 200, T0 - 500),
        (T0 + 99.5, T0 + 100, T0 - 200),
        (T0 + 100, T0 + 400, T0 + 100),
        (0.0, 300.0, 0.0),
        (299.9, 300.0, 0.0),
        (300.5, 600.0, 300.0),
    ],
)
def test_cron_ticks_are_the_expressions_times_in_utc(at: float, expected_next: float,
                                                    expected_previous: float) -> None:
    s = Schedule(name="c", type="record", cron="*/5 * * * *")
    assert s.next_tick(at) == expected_next
    assert s.previous_tick(at) == expected_previous
    assert s.period == 300


def test_cron_hours_are_utc_not_local_time() -> None:
    s = Schedule(name="noon", type="record", cron="0 12 * * *")
    assert s.next_tick(0.0) == 12 * 3600.0  # 1970-01-01T12:00:00Z
    assert s.previous_tick(3 * 86400 + 100) == 2 * 86400 + 12 * 3600.0


def test_cron_with_a_seconds_field() -> None:
    """croniter reads a sixth field as seconds: '* * * * * */10' is every 10 seconds."""
    s = Schedule(name="c6", type="record", cron="* * * * * */10")
    assert s.next_tick(T0) == T0 + 10
    assert s.next_tick(T0 + 0.5) == T0 + 10
    assert s.next_tick(T0 + 9.9) == T0 + 10
    assert s.previous_tick(T0 + 10) == T0 + 10
    assert s.previous_tick(T0 + 10.5) == T0 + 10
    assert s.previous_tick(T0 + 9.9) == T0
    assert s.period == 10


@pytest.mark.parametrize("cron", ["*/5 * * * *", "* * * * * */10"])
def test_cron_previous_tick_is_never_after_the_instant(cron: str) -> None:
    """'The last tick at or before `at`' must hold within a millisecond before a tick too."""
    s = Schedule(name="c", type="record", cron=cron)
    tick = s.next_tick(T0 + 1)
    for before in (0.0005, 0.0009, 0.001, 0.01):
        at = tick - before
        assert s.previous_tick(at) <= at, f"previous_tick({at!r}) = {s.previous_tick(at)!r}, after it"
        assert s.previous_tick(at) == tick - s.period


# -- parsing ----------------------------------------------------------------------------------


def test_parse_schedules_defaults_and_conversions() -> None:
    (a, b) = parse_schedules([
        {"type": "record", "every": 1},
        {"name": "nightly", "type": "echo", "cron": "0 3 * * *", "payload": {"x": 1}, "queue": "low",
         "retries": 0, "timeout": 5, "priority": 9, "missed": "once"},
    ])
    assert a == Schedule(name="record@1", type="record", every=1.0)
    assert isinstance(a.every, float)
    assert (a.queue, a.priority, a.missed, a.retries, a.timeout, a.payload) == ("default", 0, "skip", None, None, {})
    assert b == Schedule(name="nightly", type="echo", payload={"x": 1}, cron="0 3 * * *", queue="low", retries=0,
                         timeout=5.0, priority=9, missed="once")


def test_config_builds_with_schedules() -> None:
    settings = build({"schedule": [{"type": "record", "every": 2}]}, source="test")
    assert parse_schedules(settings.schedule)[0].every == 2.0


@pytest.mark.parametrize(
    ("entry", "names"),
    [
        ({"type": "record", "every": 1, "evry": 2}, ["schedule[1]", "'evry'"]),
        ({"every": 1}, ["schedule[1].type"]),
        ({"type": "", "every": 1}, ["schedule[1].type"]),
        ({"type": 5, "every": 1}, ["schedule[1].type"]),
        ({"type": "record", "every": 1, "cron": "* * * * *"}, ["schedule[1]", "cron", "every"]),
        ({"type": "record"}, ["schedule[1]", "cron", "every"]),
        ({"type": "record", "every": 0}, ["schedule[1].every"]),
        ({"type": "record", "every": -1}, ["schedule[1].every"]),
        ({"type": "record", "every": 0.0}, ["schedule[1].every"]),
        ({"type": "record", "every": True}, ["schedule[1].every"]),
        ({"type": "record", "every": "1"}, ["schedule[1].every"]),
        ({"type": "record", "cron": "61 * * * *"}, ["schedule[1].cron"]),
        ({"type": "record", "cron": "every minute"}, ["schedule[1].cron"]),
        ({"type": "record", "cron": "* * * *"}, ["schedule[1].cron"]),
        ({"type": "record", "cron": 5}, ["schedule[1].cron"]),
        ({"type": "record", "every": 1, "missed": "all"}, ["schedule[1].missed", "'all'"]),
        ({"type": "record", "every": 1, "missed": True}, ["schedule[1].missed"]),
        ({"type": "record", "every": 1, "queue": "has space"}, ["schedule[1].queue"]),
        ({"type": "record", "every": 1, "queue": "{tag}"}, ["schedule[1].queue"]),
        ({"type": "record", "every": 1, "queue": ""}, ["schedule[1].queue"]),
        ({"type": "record", "every": 1, "queue": 3}, ["schedule[1].queue"]),
        ({"type": "record", "every": 1, "priority": 10}, ["schedule[1].priority"]),
        ({"type": "record", "every": 1, "priority": -1}, ["schedule[1].priority"]),
        ({"type": "record", "every": 1, "priority": True}, ["schedule[1].priority"]),
        ({"type": "record", "every": 1, "priority": 1.5}, ["schedule[1].priority"]),
        ({"type": "record", "every": 1, "retries": -1}, ["schedule[1].retries"]),
        ({"type": "record", "every": 1, "retries": 1.5}, ["schedule[1].retries"]),
        ({"type": "record", "every": 1, "retries": False}, ["schedule[1].retries"]),
        ({"type": "record", "every": 1, "timeout": 0}, ["schedule[1].timeout"]),
        ({"type": "record", "every": 1, "payload": [1, 2]}, ["schedule[1].payload"]),
        ({"type": "record", "every": 1, "name": ""}, ["schedule[1].name"]),
        ({"type": "record", "every": 1, "name": "first"}, ["schedule[1].name", "'first'"]),
    ],
)
def test_parse_schedules_errors_name_the_entry_and_field(entry: dict[str, Any], names: list[str]) -> None:
    good = {"name": "first", "type": "echo", "every": 5}
    with pytest.raises(ConfigError) as caught:
        parse_schedules([good, entry])
    for name in names:
        assert name in str(caught.value), caught.value


def test_duplicate_default_names_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"schedule\[1\]\.name: 'record@1' is used by another schedule"):
        parse_schedules([{"type": "record", "every": 1}, {"type": "record", "every": 1}])


def test_config_rejects_a_bad_schedule_naming_it() -> None:
    with pytest.raises(ConfigError, match=r"schedule\[0\]\.every"):
        build({"schedule": [{"type": "record", "every": -5}]}, source="test")
    with pytest.raises(ConfigError, match="schedule"):
        build({"schedule": {"type": "record", "every": 1}}, source="test")  # a table, not an array of tables


