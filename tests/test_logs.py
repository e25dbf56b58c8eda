"""The event log (workqueue.logs): JSON lines, levels, nothing lost at close, secrets redacted."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

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


# -- size, rotation, reopening, a full disk (issue 17) ------------------------------------------


def lines_of(path: Path) -> list[int]:
    """The `n` of every line of one file; every line must be whole JSON."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path.name} ends inside a line"
    return [orjson.loads(line)["n"] for line in data.splitlines()]


def rotated(path: Path) -> list[Path]:
    """logs.txt's rotated files, oldest first."""
    return sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))


async def emit_in_batches(log: EventLog, batches: int, per_batch: int) -> int:
    """Emit lines of varied length, letting the writer take each batch before the next."""
    n = 0
    for _ in range(batches):
        for _ in range(per_batch):
            log.emit("tick", n=n, pad="x" * (n % 97))
            n += 1
        await async_wait_for(lambda: not log.lines, 5, "the writer to take the batch")
    return n


async def test_rotation_keeps_every_line_exactly_once_in_order_and_every_file_under_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "logs.txt"
    log = EventLog(str(path), max_bytes=4096, backups=1000)
    log.start()
    n = await emit_in_batches(log, 40, 25)
    await log.close()

    files = [*rotated(path), path]
    assert len(files) > 20, files
    seen = [i for f in files for i in lines_of(f)]
    assert seen == list(range(n))  # every line once, in order: none lost, none split, none twice
    for f in files:
        assert 0 < f.stat().st_size <= 4096, (f.name, f.stat().st_size)
    assert log.dropped == 0


async def test_rotation_keeps_at_most_log_backups_files_and_drops_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "logs.txt"
    log = EventLog(str(path), max_bytes=2048, backups=3)
    log.start()
    n = await emit_in_batches(log, 30, 20)
    await log.close()

    assert [f.name for f in rotated(path)] == ["logs.txt.3", "logs.txt.2", "logs.txt.1"]
    kept = [i for f in [*rotated(path), path] for i in lines_of(f)]
    assert kept == list(range(n - len(kept), n))  # the newest lines, contiguous and in order
    for f in [*rotated(path), path]:
        assert f.stat().st_size <= 2048


async def test_with_no_backups_logs_txt_restarts_empty_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "logs.txt"
    log = EventLog(str(path), max_bytes=2048, backups=0)
    log.start()
    n = await emit_in_batches(log, 10, 20)
    await log.close()

    assert rotated(path) == []
    kept = lines_of(path)
    assert kept and kept[-1] == n - 1 and path.stat().st_size <= 2048


async def test_a_line_longer_than_the_limit_is_written_whole_in_a_file_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "logs.txt"
    log = EventLog(str(path), max_bytes=1024, backups=5)
    log.start()
    log.emit("tick", n=0)
    log.emit("tick", n=1, pad="y" * 3000)
    log.emit("tick", n=2)
    await log.close()

    assert [lines_of(f) for f in [*rotated(path), path]] == [[0], [1], [2]]


async def test_reopen_after_a_rename_writes_the_next_lines_to_a_new_file(tmp_path: Path) -> None:
    """logrotate's way: move the file, then signal; nothing is lost across the move."""
    path = tmp_path / "logs.txt"
    log = EventLog(str(path))
    log.start()
    for n in range(50):
        log.emit("tick", n=n)
    await async_wait_for(lambda: not log.lines, 5, "the writer to take the lines")
    path.rename(tmp_path / "logs.txt.moved")
    log.emit("tick", n=50)  # may still land in the moved file: it is open until the reopen
    log.reopen()
    await async_wait_for(path.exists, 5, "a new logs.txt")
    for n in range(51, 100):
        log.emit("tick", n=n)
    await log.close()

    old, new = lines_of(tmp_path / "logs.txt.moved"), lines_of(path)
    assert old + new == list(range(100))
    assert new[-1] == 99 and 51 in new


async def test_lines_a_full_disk_refuses_are_counted_and_warned_about_once_a_minute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = EventLog("/dev/full")  # every write fails: ENOSPC
    log.start()
    for n in range(30):
        log.emit("tick", n=n)
        await async_wait_for(lambda: not log.lines, 5, "the writer to take the line")
    assert log.dropped == 30
    assert capsys.readouterr().err.count("cannot write /dev/full") == 1
    log.warned_at -= 61  # a minute later
    log.emit("tick", n=30)
    await log.close()
    assert log.dropped == 31
    warning = capsys.readouterr().err
    assert warning.count("cannot write /dev/full") == 1
    assert "No space left on device" in warning and "workqueue_log_lines_dropped_total" in warning
