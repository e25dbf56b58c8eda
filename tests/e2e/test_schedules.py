"""Periodic jobs (`[[schedule]]`) in real worker processes, and the command line refusing bad entries.

The process tests run real `python -m workqueue` processes against our own redis-server and read
three oracles: the `scheduled_enqueued` events in each process's log (which process created the
job of which tick), the `record` task's ledger file (which jobs really ran), and `GET /metrics`.
"""

from __future__ import annotations

import math
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.conftest import FIXTURE_PLUGINS, Service, read_log, wait_for
from tests.support import http, idempotency_key
from tests.support import service_metrics as metrics

# -- helpers ----------------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    """A TOML literal: strings and numbers as JSON spells them, tables inline."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return orjson.dumps(value).decode()


def write_schedule_config(directory: Path, redis_url: str, schedules: list[dict[str, Any]], **values: Any) -> Path:
    """config.toml with top-level settings first, then one [[schedule]] table per entry."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [f"redis_url = {toml_value(redis_url)}", f"plugin_dirs = {toml_value([str(FIXTURE_PLUGINS)])}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    for entry in schedules:
        lines += ["", "[[schedule]]"] + [f"{k} = {toml_value(v)}" for k, v in entry.items()]
    path = directory / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def enqueued_events(*services: Service, schedule: str | None = None) -> list[dict[str, Any]]:
    """`scheduled_enqueued` events across the services' logs, by tick."""
    events = [e for s in services for e in read_log(s.log_path)
              if e["event"] == "scheduled_enqueued" and (schedule is None or e["schedule"] == schedule)]
    return sorted(events, key=lambda e: e["tick"])


def ledger_lines(path: Path) -> list[tuple[str, float]]:
    """(job id, time it ran) per line of a `record` ledger."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        job_id, _attempt, _pid, ts = line.split()
        out.append((job_id, float(ts)))
    return out


def sleep_until(instant: float) -> None:
    time.sleep(max(0.0, instant - time.time()))


def started_at(service: Service) -> float:
    return epoch(next(e for e in read_log(service.log_path) if e["event"] == "worker_started")["ts"])


# -- the command line -------------------------------------------------------------------------


def exits(service: Service) -> tuple[int, str]:
    """The exit status and stderr of a process expected to refuse to start."""
    try:
        code = service.wait(10)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the service started instead of refusing its config: {service.read_stderr()}")
    return code, service.read_stderr()


@pytest.mark.parametrize(
    ("entry", "names"),
    [
        ({"type": "record", "every": 1, "cron": "* * * * *"}, ["schedule[0]", "cron", "every"]),
        ({"type": "record", "cron": "not a cron"}, ["schedule[0].cron"]),
        ({"type": "record", "every": 1, "missed": "all"}, ["schedule[0].missed"]),
    ],
)
def test_cli_exits_2_naming_an_invalid_schedule(services: Any, redis_url: str, tmp_path: Path,
                                                 entry: dict[str, Any], names: list[str]) -> None:
    config = write_schedule_config(tmp_path / "cfg", redis_url, [entry])
    code, stderr = exits(services("bad", "--role", "worker", "--config", str(config)))
    assert code == 2, stderr
    for name in names:
        assert name in stderr, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("role", ["worker", "both"])
def test_cli_refuses_a_schedule_of_an_unknown_task_type(services: Any, redis_url: str, tmp_path: Path,
                                                        role: str) -> None:
    config = write_schedule_config(tmp_path / "cfg", redis_url, [
        {"type": "record", "every": 60},
        {"name": "typo", "type": "recrod", "every": 60},
    ])
    code, stderr = exits(services("typo", "--role", role, "--config", str(config)))
    assert code == 2, stderr
    assert "schedule[1].type" in stderr and "'recrod'" in stderr, stderr
    assert "Traceback" not in stderr


# -- real worker processes --------------------------------------------------------------------


@pytest.mark.topologies("server", "cluster")
def test_three_workers_enqueue_exactly_one_job_per_second(services: Any, redis_url: str, tmp_path: Path) -> None:
    """The issue's acceptance test: `every = 1` with three worker processes, over 10 s."""
    ledger = tmp_path / "ledger.txt"
    config = write_schedule_config(tmp_path / "cfg", redis_url, [
        {"name": "tick", "type": "record", "every": 1, "payload": {"ledger": str(ledger)}},
    ], lease=1.0)
    producer = services("producer", "--role", "producer", "--config", str(config))
    workers = [services(f"worker{i}", "--role", "worker", "--config", str(config)) for i in range(3)]
    for service in (producer, *workers):
        service.wait_ready()

    window = math.ceil(max(started_at(w) for w in workers))  # every scheduler runs from here on
    sleep_until(window + 10.5)  # mid-second: the tick at window + 10 is in, the next is 0.5 s away
    counters = metrics(producer)
    last = window + 10
    assert all(w.process.poll() is None for w in workers)

    # The log writer may lag a little behind the enqueue.
    wait_for(lambda: len(enqueued_events(*workers)) >= counters["jobs_enqueued"], 3, "the logs to catch up")
    events = [e for e in enqueued_events(*workers) if e["tick"] <= last]
    ticks = [e["tick"] for e in events]
    assert all(e["schedule"] == "tick" and e["type"] == "record" and e["queue"] == "default" for e in events)
    assert ticks == sorted(set(ticks)), f"a tick was enqueued more than once: {ticks}"
    assert all(t == int(t) for t in ticks), ticks
    assert all(b - a == 1 for a, b in zip(ticks, ticks[1:])), f"a tick is missing: {ticks}"
    assert ticks[0] <= window and ticks[-1] == last, (window, ticks)
    in_window = [t for t in ticks if window <= t < window + 10]
    assert len(in_window) == 10, in_window
    # Exactly one process created each tick's job: the enqueue events across the three logs
    # are the cluster-wide count.
    assert counters["jobs_enqueued"] == len(events), (counters, ticks)
    assert len({e["job_id"] for e in events}) == len(events)

    # Each job ran exactly once, about one per second.
    ids = {e["job_id"] for e in events}
    wait_for(lambda: ids <= {j for j, _ in ledger_lines(ledger)}, 5, "every scheduled job to run")
    runs = [(j, at) for j, at in ledger_lines(ledger) if j in ids]
    assert len(runs) == len(ids), "a scheduled job ran twice"
    ran_in_window = [at for _, at in runs if window <= at < window + 10]
    assert 9 <= len(ran_in_window) <= 11, ran_in_window


def test_missed_ticks_skip_or_run_once_after_downtime(services: Any, redis_url: str, tmp_path: Path) -> None:
    """Two schedules in one worker, `missed = "skip"` and `missed = "once"`, every 2 s: the worker
    stops for more than two ticks and starts again."""
    every = 2
    ledgers = {"skipper": tmp_path / "skip.txt", "oncer": tmp_path / "once.txt"}
    config = write_schedule_config(tmp_path / "cfg", redis_url, [
        {"name": "skipper", "type": "record", "every": every, "missed": "skip",
         "payload": {"ledger": str(ledgers["skipper"])}},
        {"name": "oncer", "type": "record", "every": every, "missed": "once",
         "payload": {"ledger": str(ledgers["oncer"])}},
    ], lease=1.0, grace_period=1.0)
    first = services("first", "--role", "worker", "--config", str(config)).wait_ready()
    for name, ledger in ledgers.items():
        wait_for(lambda ledger=ledger: ledger_lines(ledger), every + 3, f"{name}'s first job to run")
    first.signal(signal.SIGTERM)
    assert first.wait(10) == 0, first.read_stderr()
    before = {name: enqueued_events(first, schedule=name) for name in ledgers}
    ran_before = {name: len(ledger_lines(ledger)) for name, ledger in ledgers.items()}
    assert all(before.values())
    last = max(e["tick"] for events in before.values() for e in events)

    # Down for at least two ticks, and start again just after a tick, so that no tick falls
    # while the process starts up.
    resume = max(last + 2 * every, math.floor(time.time() / every) * every + every) + 0.1
    sleep_until(resume)
    previous = math.floor(resume / every) * every  # the latest missed tick
    following = previous + every
    missed = (previous - last) / every
    assert missed >= 2
    second = services("second", "--role", "worker", "--config", str(config)).wait_ready()
    up = started_at(second)
    assert up < following - 0.1, "start-up took too long for this test's timing"
    wait_for(lambda: all(enqueued_events(second, schedule=n) and enqueued_events(second, schedule=n)[-1]["tick"]
                         >= following for n in ledgers), every + 3, "the first tick after the restart")

    # skip: nothing at start-up; the first job is the next tick's, enqueued at that tick.
    skipped = enqueued_events(second, schedule="skipper")
    assert [e["tick"] for e in skipped] == [following], skipped
    assert epoch(skipped[0]["ts"]) >= following - 0.01
    # once: exactly one catch-up job, for the latest missed tick, enqueued right away -- not one
    # per missed tick -- and then the next tick as usual.
    caught = enqueued_events(second, schedule="oncer")
    assert [e["tick"] for e in caught] == [previous, following], (missed, caught)
    assert epoch(caught[0]["ts"]) - up < 0.5, "the catch-up job should be enqueued at start-up"
    assert epoch(caught[0]["ts"]) < following

    wait_for(lambda: len(ledger_lines(ledgers["oncer"])) == ran_before["oncer"] + 2, 5, "the once jobs to run")
    assert len(ledger_lines(ledgers["skipper"])) == ran_before["skipper"] + 1
    assert {j for j, _ in ledger_lines(ledgers["oncer"])[-2:]} == {e["job_id"] for e in caught}


def test_ticks_do_not_drift_while_the_worker_is_busy(services: Any, redis_url: str, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    config = write_schedule_config(tmp_path / "cfg", redis_url, [
        {"name": "beat", "type": "record", "every": 1, "priority": 9, "payload": {"ledger": str(ledger)}},
    ], concurrency=4)
    service = services("busy", "--role", "both", "--config", str(config)).wait_ready()
    # About 6 s of work for 4 slots: every slot stays taken, and the loop keeps fetching and recording.
    load = [{"type": "sleep", "payload": {"seconds": 0.02}} for _ in range(600)]
    for _ in range(2):
        status, answer = http("POST", f"{service.url}/enqueue", load)
        assert status == 202, answer
    begin = time.time()
    sleep_until(math.floor(begin) + 6.5)
    assert metrics(service)["total_jobs_in_queue"] > 0, "the worker should still be busy"

    events = [e for e in enqueued_events(service) if begin <= e["tick"] <= begin + 6]
    ticks = [e["tick"] for e in events]
    assert len(ticks) >= 5, ticks
    assert all(t == int(t) for t in ticks), ticks
    assert all(b - a == 1 for a, b in zip(ticks, ticks[1:])), ticks
    lateness = [epoch(e["ts"]) - e["tick"] for e in events]
    assert all(-0.01 <= late < 0.3 for late in lateness), lateness
    # Each job holds the idempotency key `schedule:<name>:<tick>` that made it.
    with redis.Redis.from_url(redis_url) as client:
        for e in events:
            value = client.get(idempotency_key("default", f"schedule:beat:{e['tick']:.3f}"))
            assert value is not None and value.decode().split()[0] == e["job_id"], (e, value)
