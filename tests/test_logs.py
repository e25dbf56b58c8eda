"""The event log (workqueue.logs): JSON lines, levels, nothing lost at close, secrets redacted."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.conftest import async_wait_for, read_log
from workqueue.logs import EventLog, redact_url

RFC3339_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


async def test_each_event_is_one_json_line_with_rfc3339_ms_utc_ts_level_and_event(tmp_path: Path) -> None:
    path = tmp_path / "logs.txt"
    log = EventLog(str(path))
    log.start()
    log.emit("service_started", role="both")
    log.emit("dead", "error", job_id="abc", attempt=3, error="ValueError: boom\nsecond line")
    await log.close()

    raw = path.read_bytes()
    assert raw.endswith(b"\n")
    assert len(raw.splitlines()) == 2, raw
    first, second = read_log(path)
    assert first == {"ts": first["ts"], "level": "info", "event": "service_started", "role": "both"}
    assert second == {"ts": second["ts"], "level": "error", "event": "dead", "job_id": "abc", "attempt": 3,
                      "error": "ValueError: boom\nsecond line"}
    for record in (first, second):
        assert RFC3339_MS_Z.match(record["ts"]), record["ts"]
        when = datetime.strptime(record["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs(datetime.now(UTC) - when) < timedelta(seconds=60)


async def test_fields_that_are_none_are_left_out_of_the_line(tmp_path: Path) -> None:
    path = tmp_path / "logs.txt"
    log = EventLog(str(path))
    log.start()
    log.emit("started", job_id="j1", type=None, queue="default", attempt=None, wait_ms=0.0, error=None)
    await log.close()

    (record,) = read_log(path)
    assert set(record) == {"ts", "level", "event", "job_id", "queue", "wait_ms"}
    assert record["wait_ms"] == 0.0  # falsy values that are not None stay


async def test_events_below_the_configured_level_are_not_written(tmp_path: Path) -> None:
    path = tmp_path / "logs.txt"
    log = EventLog(str(path), level="warning")
    log.start()
    log.emit("debug_event", "debug")
    log.emit("info_event")
    log.emit("warning_event", "warning")
    log.emit("error_event", "error")
    await log.close()

    assert [(r["event"], r["level"]) for r in read_log(path)] == [
        ("warning_event", "warning"),
        ("error_event", "error"),
    ]


async def test_debug_level_writes_debug_events(tmp_path: Path) -> None:
    path = tmp_path / "logs.txt"
    log = EventLog(str(path), level="debug")
    log.start()
    log.emit("debug_event", "debug")
    await log.close()

    assert [r["event"] for r in read_log(path)] == ["debug_event"]


async def test_close_writes_all_10000_events_emitted_before_it_in_order(tmp_path: Path) -> None:
    path = tmp_path / "logs.txt"
    log = EventLog(str(path))
    log.start()
    for i in range(10_000):
        log.emit("tick", n=i)
    await log.close()

    records = read_log(path)
    assert [r["n"] for r in records] == list(range(10_000))
    assert path.read_bytes().count(b"\n") == 10_000


async def test_lines_emitted_while_the_writer_is_busy_are_all_written_in_order(tmp_path: Path) -> None:
    path = tmp_path / "logs.txt"
    log = EventLog(str(path))
    log.start()
    n = 0
    for _ in range(20):  # each batch is emitted while the writer holds the previous one
        for _ in range(100):
            log.emit("tick", n=n)
            n += 1
        await async_wait_for(lambda: not log.lines, 5, "the writer to take the batch")
    await log.close()

    assert [r["n"] for r in read_log(path)] == list(range(n))


async def test_log_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "logs.txt"
    path.write_bytes(b'{"ts":"2020-01-01T00:00:00.000Z","level":"info","event":"old"}\n')
    log = EventLog(str(path))
    log.start()
    log.emit("new")
    await log.close()

    assert [r["event"] for r in read_log(path)] == ["old", "new"]


def test_redact_url_hides_the_password_and_keeps_user_host_port_and_db() -> None:
    redacted = redact_url("redis://user:pw@host:6379/0")
    assert "pw" not in redacted
    assert redacted == "redis://user:***@host:6379/0"


def test_redact_url_hides_a_password_given_without_a_user() -> None:
    redacted = redact_url("rediss://:s3cret@cache.internal:6380/2")
    assert "s3cret" not in redacted
    assert redacted == "rediss://:***@cache.internal:6380/2"


def test_redact_url_leaves_urls_without_a_password_unchanged() -> None:
    for url in ("redis://127.0.0.1:6379/0", "redis://user@host:6379/0", "unix:///tmp/redis.sock?db=1", "memory://"):
        assert redact_url(url) == url


def test_redact_url_keeps_an_ipv6_host_in_brackets() -> None:
    redacted = redact_url("redis://:pw@[::1]:6379/0")
    assert "pw" not in redacted
    assert redacted == "redis://:***@[::1]:6379/0"


def test_redact_url_hides_a_password_given_as_query_parameter() -> None:
    # redis-py's from_url accepts ?password=..., so it is a Redis password like any other.
    redacted = redact_url("redis://127.0.0.1:6379/0?password=s3cret")
    assert "s3cret" not in redacted
