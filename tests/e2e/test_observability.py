"""Observability (issues 5 and 17) across real service processes: Prometheus exposition and the
README's queries over a fleet, /workers, JSON percentiles, structured logs.

The cluster-wide state (jobs by state, the oldest waiting age, live workers) comes from Redis and
must be identical from every process; the counters and histograms are each process's own and add
up across processes to the true counts.
These tests run real `python -m workqueue` processes on our own redis-server; the helpers that read
samples and log lines are shared with tests/test_metrics.py.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
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

from tests.conftest import ROOT, Service, read_log, wait_for
from tests.promql import Scrapes, as_dict, evaluate, readme_queries
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
from workqueue.metrics import JOB_BUCKETS, Metrics

Client = TestClient[Any, Any]

# What Prometheus 2.x/3.x sends when it scrapes.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
RFC3339_MS_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
# Cluster-wide families: read from Redis at each scrape, so the same from every process.
CLUSTER_FAMILIES = ("workqueue_queue_jobs", "workqueue_oldest_waiting_job_age_seconds",
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

# The workload, by queue: (type, jobs, payload, retries). Workers serve default and mail; nobody
# serves parked, so its jobs stay waiting (a backlog and an age to read).
WORKLOAD = {
    "default": [("sleep", 20, {"seconds": 0.02}, 3), ("fail", 4, {"message": "dies twice"}, 1)],
    "mail": [("echo", 10, {}, 3), ("flaky", 3, {"succeed_on": 2}, 3)],
    "parked": [("echo", 5, {}, 3)],
}
# What it must count, per queue and type: each `fail` job fails twice (retried once, then dead); each
# `flaky` fails once, is retried and succeeds.
TRUE_COUNTS = {
    "default": {"sleep": {"succeeded": 20}, "fail": {"failed": 8, "retried": 4, "dead": 4}},
    "mail": {"echo": {"succeeded": 10}, "flaky": {"failed": 3, "retried": 3, "succeeded": 3}},
}
ATTEMPTS = {"default": 28, "mail": 16}
PROMTOOL = shutil.which("promtool")


def test_readme_queries_give_the_true_values_over_a_producer_and_two_workers(
    services: Any, redis_url: str, tmp_path: Path
) -> None:
    """Prometheus scrapes every process; each query of the README, evaluated on those scrapes as
    Prometheus would (sum or max over the instances, by label), gives the true count."""
    config = write_config(tmp_path / "cfg", redis_url, lease=1.0, concurrency=8, backoff_base=0.05,
                          backoff_max=0.2, queues=["default", "mail"])
    producer, worker1, worker2 = start_processes(services, [
        ("producer", ("--role", "producer", "--config", str(config))),
        ("worker1", ("--role", "worker", "--config", str(config))),
        ("worker2", ("--role", "worker", "--config", str(config))),
    ])
    everyone = {"producer": producer, "worker1": worker1, "worker2": worker2}
    # One parked job first: the producer's series for a queue outside its `queues` begins with its
    # first job, and rate() needs a sample before the increase (as in Prometheus).
    status, _, body = fetch(f"{producer.url}/enqueue", "POST", {"type": "echo", "queue": "parked", "payload": {}})
    assert status == 202, body
    before = {name: samples_of(scrape(s)[1]) for name, s in everyone.items()}
    began = time.monotonic()

    ids = []
    for queue, jobs in WORKLOAD.items():
        batch = [{"type": t, "queue": queue, "payload": payload, "retries": retries}
                 for t, n, payload, retries in jobs for _ in range(n)]
        status, _, body = fetch(f"{producer.url}/enqueue", "POST", batch)
        assert status == 202, body
        ids += [a["id"] for a in orjson.loads(body)]

    def settled() -> bool:
        m = json_metrics(producer)
        return (m["jobs_done"], m["jobs_dead"], m["total_jobs_in_queue"], m["jobs_active"], m["jobs_scheduled"]) \
            == (33, 4, 6, 0, 0)

    wait_for(settled, 30, "33 jobs to succeed, 4 to die and 6 to wait on the parked queue")
    texts = {name: scrape(s)[1] for name, s in everyone.items()}
    seconds = time.monotonic() - began
    after = {name: samples_of(text) for name, text in texts.items()}
    for name, samples in after.items():
        assert_no_duplicate_series(samples)
        for job_id in ids:
            assert job_id not in texts[name]

    # The true counts are the cluster-wide ones Redis keeps (the JSON view): each outcome is counted
    # by exactly one process, so the processes' counters add up to them, queue by queue.
    truth = json_metrics(worker1)["queues"]
    for queue, expected in TRUE_COUNTS.items():
        assert truth[queue]["types"] == expected
        assert merged(jobs_by_type(s, queue) for s in after.values()) == expected, queue
    assert jobs_by_type(after["producer"], "default") == {}  # the producer ran nothing

    scrapes = Scrapes(before, after, seconds)
    readme = readme_queries((ROOT / "README.md").read_text())
    results = {title: evaluate(query, scrapes) for title, query in readme.items()}

    def per_second(n: float) -> Any:
        return pytest.approx(n / seconds, rel=1e-9)

    assert set(results) == {
        "Throughput: jobs finished per second, by queue", "Enqueued per second, by queue",
        "Error rate: failed attempts as a share of all attempts", "Dead jobs per second, by task type",
        "p99 wait (due to start) per queue", "Backlog: jobs waiting, by queue",
        "Age of the oldest waiting job, by queue", "Live workers", "Log lines dropped per second (a full disk)"}
    throughput = as_dict(results["Throughput: jobs finished per second, by queue"], "queue")
    assert throughput == {"default": per_second(20), "mail": per_second(13)}
    enqueued = as_dict(results["Enqueued per second, by queue"], "queue")
    assert enqueued == {"default": per_second(24), "mail": per_second(13), "parked": per_second(5)}
    (error_rate,) = results["Error rate: failed attempts as a share of all attempts"].values()
    assert error_rate == pytest.approx(11 / (33 + 11))  # 8 + 3 failed attempts; 33 succeeded
    dead = {k: v for k, v in as_dict(results["Dead jobs per second, by task type"], "type").items() if v}
    assert dead == {"fail": per_second(4)}
    backlog = as_dict(results["Backlog: jobs waiting, by queue"], "queue")
    assert backlog == {"default": 0, "mail": 0, "parked": 6}
    ages = as_dict(results["Age of the oldest waiting job, by queue"], "queue")
    assert ages["default"] == ages["mail"] == 0
    assert 0 < ages["parked"] < seconds + 30
    assert list(results["Live workers"].values()) == [2]
    assert list(results["Log lines dropped per second (a full disk)"].values()) == [0]

    # p99 wait: the histograms of both workers together hold every attempt, and Prometheus's
    # estimate lies in the bucket of the true 99th percentile (or next to it).
    p99 = as_dict(results["p99 wait (due to start) per queue"], "queue")
    assert set(p99) == {"default", "mail"}
    for queue, attempts in ATTEMPTS.items():
        counted = sum(total(s, "workqueue_job_wait_seconds_count", queue=queue) for s in after.values())
        assert counted == attempts
        true_p99 = truth[queue]["timings"]["wait_ms"]["p99"] / 1000
        assert abs(bucket_of(p99[queue]) - bucket_of(true_p99)) <= 1, (queue, p99[queue], true_p99)

    # The cluster-wide gauges are identical from every process (the age, up to the time between the
    # scrapes): `max` reads them once.
    views = [cluster_view(samples) for samples in after.values()]
    age = ("workqueue_oldest_waiting_job_age_seconds", frozenset({("queue", "parked")}))
    assert max(v[age] for v in views) - min(v[age] for v in views) < 1.0
    for view in views:
        del view[age]
    assert views[0] == views[1] == views[2]

    # Prometheus's own linter finds nothing to say about any process's exposition.
    if PROMTOOL is not None:
        for name, text in texts.items():
            checked = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                                     timeout=30)
            assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), \
                (name, checked.stdout, checked.stderr)

    # OpenMetrics, as Prometheus asks for it: parses strictly, ends with # EOF, same counts.
    for name in ("producer", "worker1"):
        content_type, text = scrape(everyone[name], PROMETHEUS_ACCEPT)
        assert content_type.startswith("application/openmetrics-text"), content_type
        assert text.endswith("# EOF\n")
        om = [s for family in parse_openmetrics(text) for s in family.samples]
        assert value(om, "workqueue_workers") == 2
        assert value(om, "workqueue_queue_jobs", queue="parked", state="waiting") == 6

    # The workers' logs: JSON lines; every finish event carries wait_ms and duration_ms.
    def finished_events() -> list[dict[str, Any]]:
        return [r for w in (worker1, worker2) for r in read_log(w.log_path) if r["event"] in FINISH_EVENTS]

    wait_for(lambda: len(finished_events()) == 33 + 11, 10, "every finish event to be logged")
    for service in everyone.values():
        check_finish_events(check_log_lines(service.log_path))


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package prometheus)")
def test_promtool_checks_every_family_clean_with_samples_in_each() -> None:
    """Every family a process exports, with samples in each (the fleet test checks real processes)."""
    metrics = Metrics(["echo"])
    metrics.expect(["default"], worker=True, producer=True)
    metrics.count_job("default", "echo", "succeeded")
    metrics.count_job("q", "unknown", "dead")
    metrics.count_enqueued("default", "echo")
    metrics.observe_job("default", "echo", 0.01, 0.02)
    metrics.observe_request("/enqueue", "POST", 202, 0.001)
    snapshot = {"queues": {"default": {"waiting": 1, "active": 0, "scheduled": 0, "dead": 0,
                                       "oldest_waiting_age_seconds": 1.5}}, "workers": 1}
    # promtool reads the Prometheus text format (it takes OpenMetrics' HELP of `x` for `x_total` as missing).
    body, _ = metrics.exposition(snapshot, openmetrics=False)
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), (checked.stdout, checked.stderr)


def test_grafana_dashboard_is_built_on_the_readme_queries_and_they_parse(tmp_path: Path) -> None:
    dashboard = orjson.loads((ROOT / "docs" / "grafana-workqueue.json").read_bytes())
    panels = dashboard["panels"]
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    readme = readme_queries((ROOT / "README.md").read_text())
    # Every README query is a panel, with Grafana's rate interval in place of the fixed range.
    assert sorted(q.replace("[5m]", "[$__rate_interval]") for q in readme.values()) == sorted(exprs)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for topic in ("throughput", "error rate", "p99 wait", "backlog", "oldest waiting", "workers"):
        assert topic in titles, topic
    if PROMTOOL is None:
        return
    # Prometheus's own parser accepts every query (as recording rules).
    rules = tmp_path / "rules.yml"
    lines = ["groups:", "  - name: readme", "    rules:"]
    for i, query in enumerate(readme.values()):
        lines += [f"      - record: workqueue:readme_{i}", f"        expr: {orjson.dumps(query).decode()}"]
    rules.write_text("\n".join(lines) + "\n")
    checked = subprocess.run([PROMTOOL, "check", "rules", str(rules)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def merged(views: Any) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for view in views:
        for task_type, counts in view.items():
            for outcome, n in counts.items():
                out.setdefault(task_type, {})[outcome] = out.get(task_type, {}).get(outcome, 0) + n
    return out


def bucket_of(seconds: float) -> int:
    """The index of the histogram bucket holding `seconds`."""
    return next((i for i, bound in enumerate(JOB_BUCKETS) if seconds <= bound), len(JOB_BUCKETS))


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


