"""Observability (issue 5) across real service processes: Prometheus exposition, /workers, JSON
percentiles, structured logs.

The cluster-wide numbers (jobs by outcome, jobs by state, live workers) come from Redis and must be
identical from every process; the histograms are each process's own and add up across processes.
These tests run real `python -m workqueue` processes on our own redis-server; the helpers that read
samples and log lines are shared with tests/test_metrics.py.
"""

from __future__ import annotations

import re
import signal
import socket
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.samples import Sample

from tests.conftest import Service, read_log, wait_for
from tests.support import write_config
from tests.test_metrics import (
    assert_no_duplicate_series,
    check_finish_events,
    check_log_lines,
    jobs_by_type,
    samples_of,
    total,
    value,
)

Client = TestClient[Any, Any]

# What Prometheus 2.x/3.x sends when it scrapes.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
RFC3339_MS_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
# Cluster-wide families: read from Redis at each scrape, so the same from every process.
CLUSTER_FAMILIES = ("workqueue_jobs_total", "workqueue_queue_jobs", "workqueue_oldest_waiting_job_age_seconds",
                    "workqueue_workers")
FINISH_EVENTS = ("succeeded", "retrying", "dead", "cancelled")


# -- helpers ----------------------------------------------------------------------------------


def fetch(url: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None,
          ) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, raw body) of one request to a service process."""
    data = orjson.dumps(body) if body is not None else None
    all_headers = {"Content-Type": "application/json"} if data is not None else {}
    all_headers.update(headers or {})
    request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, dict(r.headers.items()), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


def json_metrics(service: Service) -> dict[str, Any]:
    status, _, body = fetch(f"{service.url}/metrics", headers={"Accept": "application/json"})
    assert status == 200, body
    return orjson.loads(body)  # type: ignore[no-any-return]


def scrape(service: Service, accept: str = "text/plain") -> tuple[str, str]:
    """(Content-Type, body) of a Prometheus scrape of a service process."""
    status, headers, body = fetch(f"{service.url}/metrics", headers={"Accept": accept})
    assert status == 200, body
    return headers["Content-Type"], body.decode()


def cluster_view(samples: list[Sample]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    view: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for s in samples:
        if s.name in CLUSTER_FAMILIES:
            series = (s.name, frozenset(s.labels.items()))
            assert series not in view, f"duplicate series {series}"
            view[series] = s.value
    return view


def start_processes(services: Any, specs: list[tuple[str, tuple[str, ...]]]) -> list[Service]:
    """Start several service processes at once, then wait for each (their start-ups overlap)."""
    started = [services(name, *args) for name, args in specs]
    return [s.wait_ready() for s in started]


# -- 1. a known workload across three processes ------------------------------------------------

SUCCEEDING, DYING = 30, 5


def test_known_workload_counters_and_histograms_agree_from_every_process(
    services: Any, redis_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "cfg", redis_url, lease=1.0, concurrency=8, backoff_base=0.05,
                          backoff_max=0.2)
    producer, worker1, worker2 = start_processes(services, [
        ("producer", ("--role", "producer", "--config", str(config))),
        ("worker1", ("--role", "worker", "--config", str(config))),
        ("worker2", ("--role", "worker", "--config", str(config))),
    ])
    everyone = [producer, worker1, worker2]
    jobs = ([{"type": "sleep", "payload": {"seconds": 0.02}} for _ in range(SUCCEEDING)]
            + [{"type": "fail", "retries": 1, "payload": {"message": "dies twice"}} for _ in range(DYING)])
    status, _, body = fetch(f"{producer.url}/enqueue", "POST", jobs)
    assert status == 202, body
    ids = [a["id"] for a in orjson.loads(body)]

    def settled() -> bool:
        m = json_metrics(producer)
        return (m["jobs_done"], m["jobs_dead"], m["total_jobs_in_queue"], m["jobs_active"], m["jobs_scheduled"]) \
            == (SUCCEEDING, DYING, 0, 0, 0)

    wait_for(settled, 30, "30 jobs to succeed and 5 to die")

    # Each failing job: attempt 1 fails and is retried, attempt 2 fails and the job is dead.
    expected = {"sleep": {"succeeded": SUCCEEDING},
                "fail": {"failed": 2 * DYING, "retried": DYING, "dead": DYING}}
    attempts = {"sleep": SUCCEEDING, "fail": 2 * DYING}

    scraped = {}
    for service in everyone:
        content_type, text = scrape(service)
        assert content_type.startswith("text/plain"), content_type
        assert "version=" in content_type, content_type
        samples = samples_of(text)
        assert_no_duplicate_series(samples)
        scraped[service.directory.name] = (text, samples)
        assert jobs_by_type(samples) == expected, service.directory.name
        assert value(samples, "workqueue_queue_jobs", queue="default", state="dead") == DYING
        for state in ("waiting", "active", "scheduled"):
            assert value(samples, "workqueue_queue_jobs", queue="default", state=state) == 0
        assert value(samples, "workqueue_workers") == 2
        assert value(samples, "workqueue_oldest_waiting_job_age_seconds", queue="default") == 0
        for job_id in ids:
            assert job_id not in text

    # Cluster-wide series are identical from every process.
    views = [cluster_view(samples) for _, samples in scraped.values()]
    assert views[0] == views[1] == views[2]

    # The histograms are per process: the two workers' counts add up to the attempts; the
    # producer ran nothing.
    producer_samples = scraped["producer"][1]
    worker_samples = [scraped["worker1"][1], scraped["worker2"][1]]
    for family in ("workqueue_job_wait_seconds_count", "workqueue_job_run_seconds_count"):
        assert total(producer_samples, family) == 0
        for task_type, n in attempts.items():
            assert sum(total(s, family, queue="default", type=task_type) for s in worker_samples) == n, \
                (family, task_type)
    # Each sleep attempt ran at least its 20 ms.
    run_sum = sum(total(s, "workqueue_job_run_seconds_sum", queue="default", type="sleep") for s in worker_samples)
    assert run_sum >= SUCCEEDING * 0.02 * 0.99
    # +Inf bucket equals the count.
    for s in worker_samples:
        assert total(s, "workqueue_job_run_seconds_bucket", type="sleep", le="+Inf") == \
            total(s, "workqueue_job_run_seconds_count", type="sleep")

    # HTTP: the one POST /enqueue answered 202, counted and timed by the producer.
    assert value(producer_samples, "workqueue_http_requests_total", route="/enqueue", method="POST",
                 status="202") == 1
    assert value(producer_samples, "workqueue_http_request_duration_seconds_count", route="/enqueue",
                 method="POST") == 1

    # The Prometheus numbers agree with /metrics JSON.
    m = json_metrics(worker2)
    assert m["queues"]["default"]["types"] == expected
    assert (m["jobs_done"], m["jobs_failed"], m["jobs_retried"], m["jobs_dead"]) == (SUCCEEDING, DYING, DYING, DYING)

    # OpenMetrics, as Prometheus asks for it: parses strictly, ends with # EOF, same numbers.
    for service in (producer, worker1):
        content_type, text = scrape(service, PROMETHEUS_ACCEPT)
        assert content_type.startswith("application/openmetrics-text"), content_type
        assert text.endswith("# EOF\n")
        om = [s for family in parse_openmetrics(text) for s in family.samples]
        assert jobs_by_type(om) == expected
        assert value(om, "workqueue_workers") == 2
        assert value(om, "workqueue_queue_jobs", queue="default", state="dead") == DYING

    # The workers' logs: JSON lines; every finish event carries wait_ms and duration_ms.
    def finished_events() -> list[dict[str, Any]]:
        return [r for w in (worker1, worker2) for r in read_log(w.log_path) if r["event"] in FINISH_EVENTS]

    wait_for(lambda: len(finished_events()) == SUCCEEDING + 2 * DYING, 10, "every finish event to be logged")
    events = [e["event"] for e in finished_events()]
    assert (events.count("succeeded"), events.count("retrying"), events.count("dead")) == (SUCCEEDING, DYING, DYING)
    for service in everyone:
        check_finish_events(check_log_lines(service.log_path))


# -- 3. /workers -------------------------------------------------------------------------------


@pytest.mark.topologies
def test_workers_shows_two_live_workers_then_one_after_a_sigkill(
    services: Any, redis_url: str, tmp_path: Path
) -> None:
    lease = 1.0
    config = write_config(tmp_path / "cfg", redis_url, lease=lease)
    first, second = start_processes(services, [
        ("first", ("--role", "both", "--config", str(config), "--concurrency", "3")),
        ("second", ("--role", "worker", "--config", str(config), "--concurrency", "5")),
    ])
    # Two long jobs, so the heartbeats report jobs in flight.
    status, _, body = fetch(f"{first.url}/enqueue", "POST",
                            [{"type": "sleep", "payload": {"seconds": 3}} for _ in range(2)])
    assert status == 202, body

    def workers(service: Service) -> dict[str, Any]:
        status, _, body = fetch(f"{service.url}/workers")
        assert status == 200, body
        return orjson.loads(body)  # type: ignore[no-any-return]

    def two_in_flight() -> dict[str, Any] | None:
        listing = workers(second)
        return listing if sum(w["in_flight"] for w in listing["workers"]) == 2 else None

    listing = wait_for(two_in_flight, 5, "the heartbeats to report the two running jobs")
    assert listing["count"] == 2
    by_pid = {w["pid"]: w for w in listing["workers"]}
    assert set(by_pid) == {first.process.pid, second.process.pid}
    now = datetime.now(UTC)
    for service, concurrency in ((first, 3), (second, 5)):
        w = by_pid[service.process.pid]
        assert w["host"] == socket.gethostname()
        assert w["queues"] == ["default"]
        assert w["concurrency"] == concurrency
        assert isinstance(w["in_flight"], int) and 0 <= w["in_flight"] <= concurrency
        assert isinstance(w["name"], str) and w["name"]
        for field in ("started_at", "last_heartbeat"):
            assert RFC3339_MS_UTC.match(w[field]), w
        started = datetime.fromisoformat(w["started_at"].replace("Z", "+00:00"))
        beat = datetime.fromisoformat(w["last_heartbeat"].replace("Z", "+00:00"))
        assert started <= beat
        assert (now - beat).total_seconds() < lease + 0.5
        assert (now - started).total_seconds() < 60
    from_first = workers(first)  # every process serves the same view
    assert from_first["count"] == 2
    assert {w["name"] for w in from_first["workers"]} == {w["name"] for w in listing["workers"]}

    second.signal(signal.SIGKILL)
    killed = time.monotonic()
    second.wait(5)
    wait_for(lambda: workers(first)["count"] == 1, lease + 1.0, "/workers to drop the killed worker")
    assert time.monotonic() - killed <= lease + 1.0
    (left,) = workers(first)["workers"]
    assert left["pid"] == first.process.pid
    _, text = scrape(first)
    assert value(samples_of(text), "workqueue_workers") == 1


