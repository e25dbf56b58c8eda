"""Numbers about jobs and requests: the JSON view and the Prometheus exposition of GET /metrics.

Two kinds of Prometheus numbers, kept apart on purpose, so that every query in the README gives
the true value when every process of a fleet is scraped:
- this process's own counts: jobs by outcome (counted by the worker that recorded them), jobs
  enqueued (counted by the process that enqueued them), log lines dropped, and the latency
  histograms. Each event is counted by exactly one process, so `sum` across instances is right;
- cluster-wide state read from Redis at each scrape (queue depths, the oldest waiting job's age,
  live workers): gauges every process exports identically, aggregated with `max`.
The JSON view shows the cluster-wide counters Redis keeps. Each app owns its registry (no
module-level global), so tests and several apps in one process do not mix their numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

OUTCOMES = ("succeeded", "failed", "retried", "dead", "cancelled", "recovered")
STATES = ("waiting", "scheduled", "active", "dead")
# Job waits and runs span milliseconds to hours.
JOB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
MAX_QUEUE_LABELS = 100  # queues are created by clients; past this many, the rest fold into "other"
OTHER = "other"  # the label of task types this process did not load, and of queues past the bound
ENQUEUED = "enqueued"  # counted beside the outcomes, exposed as a family of its own


class ClusterCollector:
    """Exposes the snapshot of Redis numbers taken just before the scrape: state, not counts, so
    every process exports the same values (aggregate them with `max`)."""

    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {"queues": {}, "workers": 0}

    def describe(self) -> Iterable[Metric]:
        return []  # no fixed description: the metrics exist once a scrape has read Redis

    def collect(self) -> Iterable[Metric]:
        state = GaugeMetricFamily("workqueue_queue_jobs", "Jobs in a queue by state, cluster-wide",
                                  labels=["queue", "state"])
        age = GaugeMetricFamily("workqueue_oldest_waiting_job_age_seconds",
                                "Age of the oldest job waiting to be picked up, cluster-wide", labels=["queue"])
        for queue, row in self.queues():
            for name in STATES:
                state.add_metric([queue, name], row[name])
            age.add_metric([queue], row["oldest_waiting_age_seconds"])
        workers = GaugeMetricFamily("workqueue_workers", "Live worker processes (fresh heartbeats), cluster-wide",
                                    value=self.snapshot["workers"])
        return [state, age, workers]

    def queues(self) -> list[tuple[str, dict[str, Any]]]:
        rows = sorted(self.snapshot["queues"].items())
        if len(rows) <= MAX_QUEUE_LABELS:
            return rows
        return rows[:MAX_QUEUE_LABELS] + [(OTHER, merge([r for _, r in rows[MAX_QUEUE_LABELS:]]))]


def merge(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {name: sum(r[name] for r in rows) for name in STATES}
    out["oldest_waiting_age_seconds"] = max(r["oldest_waiting_age_seconds"] for r in rows)
    return out


class ProcessCollector:
    """This process's own counts, kept as plain integers (a dict increment on the hot path: no lock,
    no labelled child) and exposed as counters at each scrape. Label values are chosen when a count
    first appears and never change afterwards, so every series only ever grows."""

    def __init__(self, known_types: frozenset[str]) -> None:
        self.known_types = known_types
        self.jobs: dict[tuple[str, str, str], int] = {}  # (queue, type, outcome or ENQUEUED) -> count
        self.named_queues: set[str] = set()  # the first MAX_QUEUE_LABELS queues seen keep their names
        self.log_dropped: Callable[[], int] = lambda: 0

    def count(self, queue: str, task_type: str, outcome: str, n: int = 1) -> None:
        key = (queue, task_type, outcome)
        if key in self.jobs:  # the usual case: a label set already counted
            self.jobs[key] += n
            return
        key = (self.queue_label(queue), task_type if task_type in self.known_types else OTHER, outcome)
        self.jobs[key] = self.jobs.get(key, 0) + n

    def queue_label(self, queue: str) -> str:
        if queue in self.named_queues:
            return queue
        if len(self.named_queues) < MAX_QUEUE_LABELS:
            self.named_queues.add(queue)
            return queue
        return OTHER

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        jobs = CounterMetricFamily("workqueue_jobs", "Job attempts by outcome, counted by this process",
                                   labels=["queue", "type", "outcome"])
        enqueued = CounterMetricFamily("workqueue_jobs_enqueued", "Jobs enqueued by this process",
                                       labels=["queue", "type"])
        for (queue, task_type, outcome), n in sorted(self.jobs.items()):
            if outcome == ENQUEUED:
                enqueued.add_metric([queue, task_type], n)
            else:
                jobs.add_metric([queue, task_type, outcome], n)
        dropped = CounterMetricFamily("workqueue_log_lines_dropped",
                                      "Log lines this process could not write (a full disk), and dropped",
                                      value=self.log_dropped())
        return [jobs, enqueued, dropped]


class Metrics:
    """One app's instruments and collectors, in the app's own registry."""

    def __init__(self, known_types: Iterable[str]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.cluster = ClusterCollector()
        self.counts = ProcessCollector(frozenset(known_types))
        self.registry.register(self.cluster)
        self.registry.register(self.counts)
        self.job_wait = Histogram("workqueue_job_wait_seconds", "From due (enqueued or run_at) to start, this process",
                                  ["queue", "type"], buckets=JOB_BUCKETS, registry=self.registry)
        self.job_run = Histogram("workqueue_job_run_seconds", "From start to finish of an attempt, this process",
                                 ["queue", "type"], buckets=JOB_BUCKETS, registry=self.registry)
        self.job_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.job_times: list[tuple[str, str, float, float]] = []
        self.request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.requests = Counter("workqueue_http_requests", "HTTP requests by route and status, this process",
                                ["route", "method", "status"], registry=self.registry)
        self.request_time = Histogram("workqueue_http_request_duration_seconds", "HTTP request latency, this process",
                                      ["route", "method"], registry=self.registry)

    def expect(self, queues: Iterable[str], worker: bool, producer: bool) -> None:
        """Start the counters and histograms this process will fill at zero for its queues and task
        types, so Prometheus sees each series from 0 and `rate` misses none of its first increments."""
        outcomes = (OUTCOMES[:-1] if worker else ()) + ((ENQUEUED,) if producer else ())
        for queue in queues:
            for task_type in sorted(self.counts.known_types):
                for outcome in outcomes:
                    self.counts.count(queue, task_type, outcome, 0)
                if worker:
                    self.job_children[(queue, task_type)] = (self.job_wait.labels(queue, task_type),
                                                             self.job_run.labels(queue, task_type))
            if worker:
                self.counts.count(queue, OTHER, "recovered", 0)

    def count_job(self, queue: str, task_type: str, outcome: str, n: int = 1) -> None:
        """An outcome (one of OUTCOMES) this process recorded."""
        self.counts.count(queue, task_type, outcome, n)

    def count_enqueued(self, queue: str, task_type: str) -> None:
        """A job this process enqueued (created, not an idempotent repeat)."""
        self.counts.count(queue, task_type, ENQUEUED)

    def observe_job(self, queue: str, task_type: str, wait: float, run: float) -> None:
        """Once per job: only remembered here (a tuple append), and put into the histograms at the
        next scrape or every few thousand jobs, so the hot path pays no lock and no bucket search."""
        self.job_times.append((queue, task_type, wait, run))
        if len(self.job_times) >= 4096:
            self.flush_jobs()

    def flush_jobs(self) -> None:
        times, self.job_times = self.job_times, []
        for queue, task_type, wait, run in times:
            children = self.job_children.get((queue, task_type))
            if children is None:
                label = task_type if task_type in self.counts.known_types else OTHER
                children = self.job_children[(queue, task_type)] = (self.job_wait.labels(queue, label),
                                                                     self.job_run.labels(queue, label))
            children[0].observe(max(0.0, wait))
            children[1].observe(max(0.0, run))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        # Once per request: the labelled children are looked up once per route, method and status.
        children = self.request_children.get((route, method, status))
        if children is None:
            children = self.request_children[(route, method, status)] = (
                self.requests.labels(route, method, str(status)), self.request_time.labels(route, method))
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self, snapshot: dict[str, Any], openmetrics: bool) -> tuple[bytes, str]:
        """The Prometheus text (or OpenMetrics) for this snapshot, and its content type."""
        self.cluster.snapshot = snapshot
        self.flush_jobs()
        if openmetrics:
            return generate_openmetrics(self.registry), OPENMETRICS_TYPE  # type: ignore[no-untyped-call]
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


FORMATS = {"application/json": "json", "text/plain": "text", "application/openmetrics-text": "openmetrics"}


def wants_prometheus(accept: str) -> tuple[bool, bool]:
    """(Prometheus format?, OpenMetrics?) for an Accept header, honouring q-values; the format
    named with the highest q wins (the first named, on a tie) and JSON stays the default."""
    best, best_q = "json", 0.0
    for part in accept.lower().split(","):
        media, *params = (p.strip() for p in part.split(";"))
        chosen = FORMATS.get(media)
        if chosen is None:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > best_q:
            best, best_q = chosen, q
    return best != "json", best == "openmetrics"


def percentiles(values: Sequence[float]) -> dict[str, float] | None:
    """p50, p95 and p99 by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99)}


def timing_summary(rows: Sequence[tuple[str, float, float]]) -> dict[str, Any]:
    """Wait and run percentiles (ms) over a window of attempts, overall and per task type."""
    by_type: dict[str, list[tuple[float, float]]] = {}
    for task_type, wait, run in rows:
        by_type.setdefault(task_type, []).append((wait, run))
    return {
        "window": len(rows),
        "wait_ms": percentiles([w for _, w, _ in rows]),
        "run_ms": percentiles([r for _, _, r in rows]),
        "types": {t: {"window": len(v), "wait_ms": percentiles([w for w, _ in v]),
                      "run_ms": percentiles([r for _, r in v])} for t, v in sorted(by_type.items())},
    }
