"""Observability (issue 5), in process: Prometheus exposition, /workers, JSON percentiles, structured logs.

Each test starts the whole app in this process (`make_client`) with inline task types, on our own
redis-server; the tests across real service processes are in tests/e2e/test_observability.py.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.conftest import async_wait_for, inline_task, read_log
from workqueue.plugins import TaskType

Client = TestClient[Any, Any]

# Every test here runs on one server, on the Redis Cluster and on the Sentinel group.
pytestmark = pytest.mark.topologies

SEED_METRICS = ("total_jobs_in_queue", "jobs_done", "jobs_failed")
# What Prometheus 2.x/3.x sends when it scrapes.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
GENERATED_ID = re.compile(r"^[0-9a-f]{16}$")
RFC3339_MS_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
FINISH_EVENTS = ("succeeded", "retrying", "dead", "cancelled")


# -- helpers ----------------------------------------------------------------------------------


def samples_of(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def value(samples: list[Sample], name: str, **labels: str) -> float | None:
    """The one sample of `name` whose labels include `labels`; None if there is none."""
    found = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    assert len(found) <= 1, f"{len(found)} samples of {name} match {labels}: {found}"
    return found[0] if found else None


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def jobs_by_type(samples: list[Sample], queue: str = "default") -> dict[str, dict[str, float]]:
    """workqueue_jobs_total as {type: {outcome: n}} for one queue, zero counts left out."""
    out: dict[str, dict[str, float]] = {}
    for s in samples:
        if s.name == "workqueue_jobs_total" and s.labels["queue"] == queue and s.value:
            out.setdefault(s.labels["type"], {})[s.labels["outcome"]] = s.value
    return out


def assert_no_duplicate_series(samples: list[Sample]) -> None:
    seen: set[tuple[str, frozenset[tuple[str, str]]]] = set()
    for s in samples:
        series = (s.name, frozenset(s.labels.items()))
        assert series not in seen, f"the exposition repeats the series {s.name}{dict(s.labels)}"
        seen.add(series)


def check_log_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of logs.txt is one JSON object with ts, level and event; returns them."""
    records = []
    for line in path.read_bytes().splitlines():
        record = orjson.loads(line)
        assert isinstance(record, dict), line
        assert {"ts", "level", "event"} <= record.keys(), record
        assert RFC3339_MS_UTC.match(record["ts"]), record
        assert record["level"] in ("debug", "info", "warning", "error"), record
        records.append(record)
    return records


def check_finish_events(records: list[dict[str, Any]]) -> None:
    for r in records:
        if r["event"] in FINISH_EVENTS:
            assert {"job_id", "type", "queue", "attempt", "wait_ms", "duration_ms"} <= r.keys(), r
            assert r["wait_ms"] >= 0 and r["duration_ms"] >= 0, r
        if r["event"] == "started":
            assert "wait_ms" in r, r


async def metrics_json(client: Client) -> dict[str, Any]:
    response = await client.get("/metrics", headers={"Accept": "application/json"})
    assert response.status == 200
    return await response.json()  # type: ignore[no-any-return]


async def prometheus_text(client: Client, accept: str = "text/plain") -> str:
    response = await client.get("/metrics", headers={"Accept": accept})
    assert response.status == 200
    return await response.text()


async def enqueue(client: Client, body: Any, headers: dict[str, str] | None = None) -> Any:
    response = await client.post("/enqueue", json=body, headers=headers or {})
    assert response.status == 202, await response.text()
    return await response.json()


async def echo(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


async def broken(payload: dict[str, Any]) -> None:
    raise RuntimeError("broken on purpose")


async def forever(payload: dict[str, Any]) -> None:
    await asyncio.sleep(30)


def tasks(**handlers: Callable[..., Any]) -> dict[str, TaskType]:
    return {name: inline_task(name, h) for name, h in handlers.items()}


# -- 2. content negotiation --------------------------------------------------------------------


@pytest.fixture
async def both(make_client: Any, make_settings: Any, redis_url: str) -> Client:
    return await make_client(make_settings(redis_url=redis_url), tasks(echo=echo))  # type: ignore[no-any-return]


@pytest.mark.parametrize("accept", [None, "application/json", "*/*", BROWSER_ACCEPT, "application/*"])
async def test_metrics_answers_json_unless_prometheus_format_is_asked_for(both: Client, accept: str | None) -> None:
    if accept is None:
        response = await both.get("/metrics", skip_auto_headers=["Accept"])
    else:
        response = await both.get("/metrics", headers={"Accept": accept})
    assert response.status == 200
    assert response.content_type == "application/json"
    body = await response.json()
    for key in SEED_METRICS:
        assert isinstance(body[key], int), key


async def test_metrics_stays_json_for_a_client_that_prefers_json_over_text(both: Client) -> None:
    """axios (and many HTTP libraries) send `application/json, text/plain, */*`: JSON comes first."""
    for accept in ("application/json, text/plain, */*", "text/plain;q=0.5, application/json"):
        response = await both.get("/metrics", headers={"Accept": accept})
        assert response.content_type == "application/json", accept


@pytest.mark.parametrize("accept, content_type", [
    ("text/plain", "text/plain"),
    ("text/plain; version=0.0.4", "text/plain"),
    ("application/openmetrics-text", "application/openmetrics-text"),
    (PROMETHEUS_ACCEPT, "application/openmetrics-text"),
])
async def test_metrics_answers_prometheus_format_when_asked(both: Client, accept: str, content_type: str) -> None:
    await enqueue(both, {"type": "echo", "payload": {}})  # a request, so HTTP series exist
    response = await both.get("/metrics", headers={"Accept": accept})
    assert response.status == 200
    assert response.content_type == content_type
    assert "charset=utf-8" in response.headers["Content-Type"]
    text = await response.text()
    if content_type == "text/plain":
        names = {f.name for f in text_string_to_metric_families(text)}
    else:
        assert text.endswith("# EOF\n")
        names = {f.name for f in parse_openmetrics(text)}
    assert {"workqueue_jobs", "workqueue_jobs_enqueued", "workqueue_log_lines_dropped", "workqueue_queue_jobs",
            "workqueue_oldest_waiting_job_age_seconds", "workqueue_workers", "workqueue_job_wait_seconds",
            "workqueue_job_run_seconds", "workqueue_http_requests", "workqueue_http_request_duration_seconds"} <= names


# -- 4. JSON percentiles -----------------------------------------------------------------------


async def test_json_metrics_percentiles_lie_within_the_sleeps_of_the_handlers(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    async def fast(payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.05)

    async def slow(payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.15)

    client = await make_client(make_settings(redis_url=redis_url, concurrency=4),
                               tasks(fast=fast, slow=slow, broken=broken))
    await enqueue(client, [{"type": "fast", "payload": {}} for _ in range(8)]
                  + [{"type": "slow", "payload": {}} for _ in range(4)]
                  + [{"type": "broken", "retries": 0, "payload": {}} for _ in range(2)])

    async def settled() -> bool:
        m = await metrics_json(client)
        return (m["jobs_done"], m["jobs_dead"], m["jobs_active"]) == (12, 2, 0)

    await async_wait_for(settled, 20, "12 jobs to succeed and 2 to die")
    slack = 250.0
    row = (await metrics_json(client))["queues"]["default"]
    assert row["types"] == {"fast": {"succeeded": 8}, "slow": {"succeeded": 4}, "broken": {"failed": 2, "dead": 2}}
    timings = row["timings"]
    assert timings["window"] == 14
    by_type = timings["types"]
    assert {t: by_type[t]["window"] for t in by_type} == {"fast": 8, "slow": 4, "broken": 2}
    for task_type, sleep_ms in (("fast", 50.0), ("slow", 150.0)):
        run = by_type[task_type]["run_ms"]
        assert set(run) == {"p50", "p95", "p99"}
        for p in ("p50", "p95", "p99"):
            assert sleep_ms - 1 <= run[p] <= sleep_ms + slack, (task_type, p, run)
        assert run["p50"] <= run["p95"] <= run["p99"]
    assert by_type["broken"]["run_ms"]["p99"] <= slack
    for t in ("fast", "slow", "broken"):
        wait = by_type[t]["wait_ms"]
        assert all(wait[p] >= 0 for p in ("p50", "p95", "p99")), wait
    # Overall, nearest rank over 14 attempts: 2 broken (~0 ms), 8 fast, 4 slow.
    assert 50 - 1 <= timings["run_ms"]["p50"] <= 50 + slack
    assert 150 - 1 <= timings["run_ms"]["p99"] <= 150 + slack
    assert timings["wait_ms"]["p50"] >= 0

    # This process ran every attempt: its histograms agree, and none ran shorter than its sleep.
    samples = samples_of(await prometheus_text(client))
    assert jobs_by_type(samples) == row["types"]
    assert value(samples, "workqueue_job_run_seconds_count", queue="default", type="fast") == 8
    assert value(samples, "workqueue_job_run_seconds_count", queue="default", type="slow") == 4
    assert value(samples, "workqueue_job_wait_seconds_count", queue="default", type="broken") == 2
    assert value(samples, "workqueue_job_run_seconds_bucket", queue="default", type="fast", le="0.025") == 0
    assert value(samples, "workqueue_job_run_seconds_bucket", queue="default", type="slow", le="0.1") == 0


# -- 5. logs -----------------------------------------------------------------------------------


async def test_request_id_is_returned_and_logged_on_the_request_and_its_enqueued_jobs(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "logs.txt"
    client = await make_client(make_settings(redis_url=redis_url, backoff_base=0.01, backoff_max=0.02),
                               tasks(echo=echo, broken=broken, forever=forever))
    response = await client.post("/enqueue", json=[{"type": "echo", "payload": {"n": i}} for i in range(3)],
                                 headers={"X-Request-Id": "abc-123"})
    assert response.status == 202
    assert response.headers["X-Request-Id"] == "abc-123"
    ids = {a["id"] for a in await response.json()}
    other = await enqueue(client, {"type": "broken", "retries": 1, "payload": {}})
    stuck = await enqueue(client, {"type": "forever", "payload": {}})
    # An error answer carries the id too.
    refused = await client.post("/enqueue", json={"type": "nope", "payload": {}}, headers={"X-Request-Id": "r.4_2"})
    assert refused.status == 422
    assert refused.headers["X-Request-Id"] == "r.4_2"

    await async_wait_for(lambda: any(r["event"] == "started" and r["job_id"] == stuck["id"]
                                     for r in read_log(log_path)), 5, "the long job to start")
    cancelled = await client.post(f"/jobs/{stuck['id']}/cancel")
    assert cancelled.status == 200

    def events(name: str) -> list[dict[str, Any]]:
        return [r for r in read_log(log_path) if r["event"] == name]

    await async_wait_for(lambda: len(events("succeeded")) == 3 and events("dead") and events("cancelled"), 10,
                         "the jobs to end")
    await client.close()  # flushes the log

    records = check_log_lines(log_path)
    check_finish_events(records)
    requests = [r for r in records if r["event"] == "http_request" and r.get("request_id") == "abc-123"]
    assert len(requests) == 1
    (request,) = requests
    assert (request["method"], request["route"], request["status"]) == ("POST", "/enqueue", 202)
    assert request["duration_ms"] >= 0
    enqueued = [r for r in records if r["event"] == "enqueued" and r["job_id"] in ids]
    assert len(enqueued) == 3
    assert all(r["request_id"] == "abc-123" for r in enqueued)
    # The other request's job carries that request's own (generated) id.
    (own,) = [r for r in records if r["event"] == "enqueued" and r["job_id"] == other["id"]]
    assert own["request_id"] != "abc-123" and GENERATED_ID.match(own["request_id"])
    assert any(r["event"] == "http_request" and r["request_id"] == "r.4_2" and r["status"] == 422 for r in records)
    by_event = {r["event"]: r for r in records if r.get("job_id") in (other["id"], stuck["id"])}
    assert {"retrying", "dead", "cancelled"} <= by_event.keys()
    assert by_event["retrying"]["level"] == "warning" and by_event["dead"]["level"] == "error"
    assert by_event["cancelled"]["duration_ms"] > 0
    assert records[-1]["event"] == "service_stopped"


@pytest.mark.parametrize("given", ["has spaces in it", "x" * 200, "y" * 65, "semi;colon", "slash/id", ""])
async def test_an_unsafe_request_id_is_replaced_by_a_generated_one(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path, given: str
) -> None:
    log_path = tmp_path / "logs.txt"
    client = await make_client(make_settings(redis_url=redis_url, role="producer"), tasks(echo=echo))
    response = await client.post("/enqueue", json={"type": "echo", "payload": {}}, headers={"X-Request-Id": given})
    assert response.status == 202
    generated = response.headers["X-Request-Id"]
    assert generated != given and GENERATED_ID.match(generated), generated
    job_id = (await response.json())["id"]
    await client.close()
    records = check_log_lines(log_path)
    (enqueued,) = [r for r in records if r["event"] == "enqueued"]
    assert (enqueued["job_id"], enqueued["request_id"]) == (job_id, generated)
    (request,) = [r for r in records if r["event"] == "http_request"]
    assert request["request_id"] == generated
    assert given not in log_path.read_text() or not given


async def test_a_safe_request_id_of_64_characters_is_kept(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    client = await make_client(make_settings(redis_url=redis_url, role="producer"), tasks(echo=echo))
    given = "A-z_0.9" + "k" * 57
    response = await client.get("/healthz", headers={"X-Request-Id": given})
    assert response.headers["X-Request-Id"] == given
    first = (await client.get("/healthz")).headers["X-Request-Id"]
    second = (await client.get("/healthz")).headers["X-Request-Id"]
    assert GENERATED_ID.match(first) and GENERATED_ID.match(second) and first != second


async def run_small_workload(client: Client, log_path: Path) -> None:
    await enqueue(client, [{"type": "echo", "payload": {}}, {"type": "echo", "payload": {}},
                           {"type": "broken", "retries": 1, "payload": {}}])

    async def settled() -> bool:
        m = await metrics_json(client)
        return (m["jobs_done"], m["jobs_dead"]) == (2, 1)

    await async_wait_for(settled, 10, "2 jobs to succeed and 1 to die")
    await client.close()  # every line written


async def test_log_level_warning_suppresses_info_events(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "logs.txt"
    client = await make_client(make_settings(redis_url=redis_url, log_level="warning", backoff_base=0.01,
                                             backoff_max=0.02), tasks(echo=echo, broken=broken))
    await run_small_workload(client, log_path)
    records = check_log_lines(log_path)
    assert [r["event"] for r in records] == ["retrying", "dead"]
    assert {r["level"] for r in records} == {"warning", "error"}


async def test_log_events_writes_only_the_listed_events(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "logs.txt"
    client = await make_client(make_settings(redis_url=redis_url, log_events=["enqueued"], backoff_base=0.01,
                                             backoff_max=0.02), tasks(echo=echo, broken=broken))
    await run_small_workload(client, log_path)
    records = check_log_lines(log_path)
    assert [r["event"] for r in records] == ["enqueued"] * 3
    assert len({r["request_id"] for r in records}) == 1  # one request created all three


async def test_log_exclude_drops_those_events(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "logs.txt"
    client = await make_client(make_settings(redis_url=redis_url, log_exclude=["http_request"], backoff_base=0.01,
                                             backoff_max=0.02), tasks(echo=echo, broken=broken))
    await run_small_workload(client, log_path)
    records = check_log_lines(log_path)
    events = [r["event"] for r in records]
    assert "http_request" not in events
    assert events.count("enqueued") == 3 and events.count("succeeded") == 2
    assert events.count("retrying") == 1 and events.count("dead") == 1
    assert {"service_started", "worker_started", "started", "service_stopped"} <= set(events)
    check_finish_events(records)


# -- 6. label bounds ---------------------------------------------------------------------------

MARKER = "payload-value-7f3a9c"


async def two_apps(make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path,
                   producer_types: tuple[str, ...]) -> tuple[Client, Client]:
    """A producer that knows `producer_types` and echo, and a worker that knows only echo."""
    producer = await make_client(
        make_settings(redis_url=redis_url, role="producer", log_path=str(tmp_path / "producer.txt")),
        tasks(echo=echo, **{t: echo for t in producer_types}))
    worker = await make_client(
        make_settings(redis_url=redis_url, role="both", log_path=str(tmp_path / "worker.txt")), tasks(echo=echo))
    return producer, worker


async def test_a_job_type_unknown_to_the_scraping_process_is_labelled_other(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    producer, worker = await two_apps(make_client, make_settings, redis_url, tmp_path, ("secret_type",))
    answers = await enqueue(producer, [{"type": "secret_type", "payload": {"token": MARKER}},
                                       {"type": "echo", "payload": {"token": MARKER}}])
    ids = [a["id"] for a in answers]

    async def settled() -> bool:
        m = await metrics_json(worker)
        return (m["jobs_done"], m["jobs_dead"]) == (1, 1)

    await async_wait_for(settled, 10, "the echo job to succeed and the secret one to die at the worker")
    for job_id in ids:  # a route with an id in it, and an unmatched path with one
        assert (await worker.get(f"/jobs/{job_id}")).status == 200
        assert (await worker.get(f"/no/such/{job_id}")).status == 404

    text = await prometheus_text(worker)
    samples = samples_of(text)
    assert_no_duplicate_series(samples)
    assert jobs_by_type(samples) == {"echo": {"succeeded": 1}, "other": {"failed": 1, "dead": 1}}
    assert {s.labels["type"] for s in samples if "type" in s.labels} <= {"echo", "other"}
    assert value(samples, "workqueue_job_run_seconds_count", queue="default", type="other") == 1
    assert "secret_type" not in text
    routes = {s.labels["route"] for s in samples if s.name == "workqueue_http_requests_total"}
    assert {"/jobs/{id}", "unmatched"} <= routes
    # The producer ran nothing, so it counts no outcome; it knows the type it enqueued, by name.
    producer_samples = samples_of(await prometheus_text(producer))
    assert jobs_by_type(producer_samples) == {}
    assert value(producer_samples, "workqueue_jobs_enqueued_total", queue="default", type="secret_type") == 1
    assert value(producer_samples, "workqueue_jobs_enqueued_total", queue="default", type="echo") == 1

    for client in (worker, producer):
        for accept in ("text/plain", "application/openmetrics-text"):
            exposition = await prometheus_text(client, accept)
            for job_id in ids:
                assert job_id not in exposition
            assert MARKER not in exposition


async def test_two_unknown_types_fold_into_one_other_series(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    producer, worker = await two_apps(make_client, make_settings, redis_url, tmp_path,
                                      ("secret_type", "secret_type_2"))
    await enqueue(producer, [{"type": "secret_type", "payload": {}}, {"type": "secret_type_2", "payload": {}}])

    async def settled() -> bool:
        return (await metrics_json(worker))["jobs_dead"] == 2

    await async_wait_for(settled, 10, "both secret jobs to die at the worker")
    for accept in ("text/plain", "application/openmetrics-text"):
        text = await prometheus_text(worker, accept)
        samples = ([s for f in parse_openmetrics(text) for s in f.samples] if accept != "text/plain"
                   else samples_of(text))
        # One series per label set: Prometheus refuses a scrape that repeats one.
        assert_no_duplicate_series(samples)
        assert value(samples, "workqueue_jobs_total", queue="default", type="other", outcome="dead") == 2


async def test_queues_past_one_hundred_fold_into_other(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    client = await make_client(make_settings(redis_url=redis_url, role="producer"), tasks(echo=echo))
    for i in range(105):
        await enqueue(client, {"type": "echo", "queue": f"q{i:03d}", "payload": {}})
    samples = samples_of(await prometheus_text(client))
    assert_no_duplicate_series(samples)
    queues = {s.labels["queue"] for s in samples if s.name == "workqueue_queue_jobs"}
    assert len(queues) == 101
    assert queues == {f"q{i:03d}" for i in range(100)} | {"other"}
    assert value(samples, "workqueue_queue_jobs", queue="other", state="waiting") == 5
    assert value(samples, "workqueue_queue_jobs", queue="q000", state="waiting") == 1
    # This process's own counter: its first 100 queues keep their names ("default" is one, from its
    # settings), the rest fold into "other".
    enqueued = {s.labels["queue"]: s.value for s in samples if s.name == "workqueue_jobs_enqueued_total"}
    assert len(enqueued) == 101 and enqueued["other"] == 6 and enqueued["q000"] == 1, enqueued
    assert enqueued["default"] == 0


async def test_one_request_with_jobs_on_two_queues_is_counted_per_queue(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    client = await make_client(make_settings(redis_url=redis_url, role="producer"), tasks(echo=echo))
    answers = await enqueue(client, [{"type": "echo", "queue": "alpha", "payload": {}},
                                     {"type": "echo", "queue": "beta", "payload": {}},
                                     {"type": "echo", "queue": "beta", "payload": {}}])
    assert [a["queue"] for a in answers] == ["alpha", "beta", "beta"]
    samples = samples_of(await prometheus_text(client))
    assert value(samples, "workqueue_queue_jobs", queue="alpha", state="waiting") == 1
    assert value(samples, "workqueue_queue_jobs", queue="beta", state="waiting") == 2
    m = await metrics_json(client)
    assert (m["queues"]["alpha"]["waiting"], m["queues"]["beta"]["waiting"]) == (1, 2)


async def test_json_run_time_is_the_handlers_time_even_for_jobs_fetched_ahead(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    """Short jobs make the worker fetch ahead of its consumers; a job waiting in that local buffer
    has not started: its time there is wait, not run, in the JSON percentiles as in the histograms."""
    async def tiny(payload: dict[str, Any]) -> None:
        return None

    async def nap(payload: dict[str, Any]) -> None:
        await asyncio.sleep(0.1)

    client = await make_client(make_settings(redis_url=redis_url, concurrency=1), tasks(tiny=tiny, nap=nap))
    await enqueue(client, [{"type": "tiny", "payload": {}} for _ in range(20)])

    async def done(n: int) -> bool:
        return (await metrics_json(client))["jobs_done"] == n

    await async_wait_for(lambda: done(20), 10, "the tiny jobs to finish")
    await enqueue(client, [{"type": "nap", "payload": {}} for _ in range(5)])
    await async_wait_for(lambda: done(25), 10, "the naps to finish")
    run = (await metrics_json(client))["queues"]["default"]["timings"]["types"]["nap"]["run_ms"]
    assert run["p50"] >= 100 - 1 and run["p99"] <= 100 + 80, run
    samples = samples_of(await prometheus_text(client))
    # The histogram (the worker's own start and finish) has every nap under 250 ms.
    assert value(samples, "workqueue_job_run_seconds_bucket", queue="default", type="nap", le="0.25") == 5
