"""Tracing (issue 17): a `traceparent` sent with POST /enqueue leads to the worker's `workqueue.run`
spans in the same trace, retries are further spans, a handler's own spans nest under the attempt's;
with tracing off nothing of OpenTelemetry is imported, and without the extra start-up stops naming it.

In process, spans go to the SDK's in-memory exporter (installed once as the global tracer provider,
which the app then uses); a real producer and worker export with OTEL_TRACES_EXPORTER=console.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import ROOT, async_wait_for, inline_task, wait_for
from tests.support import enqueue, http, wait_status, write_config

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


@pytest.fixture(scope="session")
def exporter() -> InMemorySpanExporter:
    """The in-memory exporter behind the process's (global, set-once) tracer provider."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    yield exporter
    exporter.clear()


def hexid(value: int, digits: int) -> str:
    return format(value, f"0{digits}x")


def named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


def parent_of(span: ReadableSpan) -> str | None:
    return hexid(span.parent.span_id, 16) if span.parent is not None else None


def span_id(span: ReadableSpan) -> str:
    return hexid(span.context.span_id, 16)


def trace_id(span: ReadableSpan) -> str:
    return hexid(span.context.trace_id, 32)


async def flaky(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    with trace.get_tracer("tests").start_as_current_span("handler.own") as own:
        own.set_attribute("handler.attempt", ctx.attempt)
        await asyncio.sleep(0)
    if ctx.attempt < payload.get("succeed_on", 1):
        raise RuntimeError(f"failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


def blocking(payload: dict[str, Any]) -> dict[str, Any]:
    """A plain function: run in a worker thread."""
    with trace.get_tracer("tests").start_as_current_span("handler.thread"):
        time.sleep(0.01)
    return {"thread": threading.current_thread().name}


@pytest.fixture
async def traced_app(make_client: Any, make_settings: Any, redis_url: str, spans: InMemorySpanExporter) -> Any:
    tasks = {"flaky": inline_task("flaky", flaky), "blocking": inline_task("blocking", blocking)}
    return await make_client(make_settings(redis_url=redis_url, tracing=True), tasks)


async def test_a_traceparent_sent_with_an_enqueue_finds_the_attempt_span_in_the_same_trace(
    traced_app: Any, spans: InMemorySpanExporter
) -> None:
    response = await traced_app.post("/enqueue", json={"type": "flaky", "payload": {}},
                                     headers={"traceparent": TRACEPARENT})
    assert response.status == 202, await response.text()
    job_id = (await response.json())["id"]
    await wait_status(traced_app, job_id, "succeeded")
    await async_wait_for(lambda: named(spans, "workqueue.run"), 5, "the attempt's span")

    (enqueue_span,) = named(spans, "workqueue.enqueue")
    assert trace_id(enqueue_span) == TRACE_ID and parent_of(enqueue_span) == PARENT_ID
    assert enqueue_span.kind is SpanKind.PRODUCER
    assert enqueue_span.attributes is not None
    assert dict(enqueue_span.attributes).items() >= {"workqueue.job_id": job_id, "workqueue.queue": "default",
                                                     "workqueue.type": "flaky", "workqueue.jobs": 1}.items()
    (run,) = named(spans, "workqueue.run")
    assert trace_id(run) == TRACE_ID and parent_of(run) == span_id(enqueue_span)
    assert run.kind is SpanKind.CONSUMER
    assert run.attributes is not None
    assert dict(run.attributes).items() >= {"workqueue.job_id": job_id, "workqueue.type": "flaky",
                                            "workqueue.queue": "default", "workqueue.attempt": 1,
                                            "workqueue.outcome": "succeeded"}.items()
    (own,) = named(spans, "handler.own")  # the handler's own span, nested under the attempt's
    assert trace_id(own) == TRACE_ID and parent_of(own) == span_id(run)


async def test_retries_are_further_run_spans_in_the_same_trace(traced_app: Any, spans: InMemorySpanExporter) -> None:
    response = await traced_app.post("/enqueue", json={"type": "flaky", "payload": {"succeed_on": 3}},
                                     headers={"traceparent": TRACEPARENT})
    job_id = (await response.json())["id"]
    await wait_status(traced_app, job_id, "succeeded")
    await async_wait_for(lambda: len(named(spans, "workqueue.run")) == 3, 5, "three attempt spans")

    (enqueue_span,) = named(spans, "workqueue.enqueue")
    runs = sorted(named(spans, "workqueue.run"), key=lambda s: s.start_time or 0)
    assert [(s.attributes or {})["workqueue.attempt"] for s in runs] == [1, 2, 3]
    assert [(s.attributes or {})["workqueue.outcome"] for s in runs] == ["retrying", "retrying", "succeeded"]
    assert {trace_id(s) for s in runs} == {TRACE_ID}
    assert {parent_of(s) for s in runs} == {span_id(enqueue_span)}
    assert len({span_id(s) for s in runs}) == 3
    assert runs[0].status.status_code is StatusCode.ERROR
    assert "RuntimeError: failure on attempt 1" in (runs[0].status.description or "")
    owns = sorted(named(spans, "handler.own"), key=lambda s: s.start_time or 0)
    assert [parent_of(s) for s in owns] == [span_id(s) for s in runs]  # each under its own attempt


async def test_each_job_of_an_array_gets_the_requests_context_and_thread_handlers_nest_too(
    traced_app: Any, spans: InMemorySpanExporter
) -> None:
    response = await traced_app.post("/enqueue", json=[{"type": "blocking", "payload": {}} for _ in range(3)],
                                     headers={"traceparent": TRACEPARENT})
    ids = [a["id"] for a in await response.json()]
    for job_id in ids:
        await wait_status(traced_app, job_id, "succeeded")
    await async_wait_for(lambda: len(named(spans, "handler.thread")) == 3, 5, "the handlers' spans")

    (enqueue_span,) = named(spans, "workqueue.enqueue")
    assert (enqueue_span.attributes or {})["workqueue.jobs"] == 3
    runs = {(s.attributes or {})["workqueue.job_id"]: s for s in named(spans, "workqueue.run")}
    assert set(runs) == set(ids)
    assert {parent_of(s) for s in runs.values()} == {span_id(enqueue_span)}
    assert {trace_id(s) for s in runs.values()} == {TRACE_ID}
    # A plain-function handler runs in a thread, in the attempt's context.
    assert {parent_of(s) for s in named(spans, "handler.thread")} == {span_id(s) for s in runs.values()}


async def test_without_a_traceparent_the_enqueue_span_starts_a_trace_of_its_own(
    traced_app: Any, spans: InMemorySpanExporter
) -> None:
    job_id = await enqueue(traced_app, type="flaky")
    await wait_status(traced_app, job_id, "succeeded")
    await async_wait_for(lambda: named(spans, "workqueue.run"), 5, "the attempt's span")
    (enqueue_span,) = named(spans, "workqueue.enqueue")
    (run,) = named(spans, "workqueue.run")
    assert enqueue_span.parent is None
    assert trace_id(run) == trace_id(enqueue_span) != TRACE_ID and parent_of(run) == span_id(enqueue_span)


async def test_with_tracing_off_no_span_is_made(make_client: Any, make_settings: Any, redis_url: str,
                                                spans: InMemorySpanExporter) -> None:
    client = await make_client(make_settings(redis_url=redis_url), {"flaky": inline_task("flaky", flaky)})
    response = await client.post("/enqueue", json={"type": "flaky", "payload": {}},
                                 headers={"traceparent": TRACEPARENT})
    await wait_status(client, (await response.json())["id"], "succeeded")
    assert [s.name for s in spans.get_finished_spans()] == ["handler.own"]  # the handler's own, a root
    assert spans.get_finished_spans()[0].parent is None


OFF_SCRIPT = """
import asyncio, sys
import redis.asyncio  # redis-py 7 imports parts of opentelemetry itself when it is installed
before = {m for m in sys.modules if m.split(".")[0] == "opentelemetry"}
from aiohttp.test_utils import TestClient, TestServer
from workqueue.api import create_app
from workqueue.config import build
from workqueue.plugins import load_plugins

async def main():
    settings = build({"redis_url": "memory://", "plugin_dirs": [sys.argv[1]], "log_path": sys.argv[2]}, "test")
    client = TestClient(TestServer(create_app(settings, load_plugins([]) | __import__("tests.conftest",
                        fromlist=["fixture_tasks"]).fixture_tasks())))
    await client.start_server()
    answer = await (await client.post("/enqueue", json={"type": "echo", "payload": {}},
                                      headers={"traceparent": sys.argv[3]})).json()
    for _ in range(500):
        job = await (await client.get(f"/jobs/{answer['id']}")).json()
        if job["status"] == "succeeded":
            break
        await asyncio.sleep(0.01)
    await client.close()
    assert job["status"] == "succeeded", job
    after = {m for m in sys.modules if m.split(".")[0] == "opentelemetry"}
    print(sorted(after - before), "workqueue.tracing" in sys.modules)

asyncio.run(main())
"""


def test_with_tracing_off_workqueue_imports_nothing_of_opentelemetry(tmp_path: Path) -> None:
    """The whole path, enqueue to a finished job, in a fresh interpreter that has the extra installed:
    no module of opentelemetry beyond those redis-py loads by itself, and not workqueue.tracing."""
    done = subprocess.run([sys.executable, "-c", OFF_SCRIPT, str(ROOT / "tests" / "fixture_plugins"),
                           str(tmp_path / "logs.txt"), TRACEPARENT], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] False"


def test_tracing_without_the_extra_stops_start_up_in_one_line_naming_it(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('redis_url = "memory://"\ntracing = true\nplugin_dirs = []\n')
    # As if the extra were not installed: importing opentelemetry fails.
    script = ("import sys; sys.modules['opentelemetry'] = None; from workqueue.__main__ import main; "
              "sys.exit(main(['--port', '0']))")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("workqueue: tracing: ") and "pip install 'workqueue[otel]'" in done.stderr


def console_spans(text: str) -> list[dict[str, Any]]:
    """The spans a console exporter printed: one JSON object per line."""
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_real_producer_and_worker_export_the_trace_on_the_console(
    services: Any, redis_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "cfg", redis_url, tracing=True, backoff_base=0.05, backoff_max=0.1)
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "wq-test"}
    producer = services("producer", "--role", "producer", "--config", str(config), env=env).wait_ready()
    worker = services("worker", "--role", "worker", "--config", str(config), env=env).wait_ready()

    import urllib.request

    request = urllib.request.Request(f"{producer.url}/enqueue", method="POST",
                                     data=orjson.dumps({"type": "traced", "payload": {"succeed_on": 2}}),
                                     headers={"Content-Type": "application/json", "traceparent": TRACEPARENT})
    with urllib.request.urlopen(request, timeout=5) as r:
        job_id = orjson.loads(r.read())["id"]
    wait_for(lambda: http("GET", f"{producer.url}/jobs/{job_id}")[1]["status"] == "succeeded", 10, "the job")

    def runs() -> list[dict[str, Any]]:
        return [s for s in console_spans(worker.read_stdout()) if s["name"] == "workqueue.run"]

    wait_for(lambda: len(runs()) == 2 and console_spans(producer.read_stdout()), 10, "the spans on stdout")
    (enqueue_span,) = [s for s in console_spans(producer.read_stdout()) if s["name"] == "workqueue.enqueue"]
    assert enqueue_span["context"]["trace_id"] == f"0x{TRACE_ID}" and enqueue_span["parent_id"] == f"0x{PARENT_ID}"
    assert enqueue_span["resource"]["attributes"]["service.name"] == "wq-test"
    attempts = sorted(runs(), key=lambda s: s["attributes"]["workqueue.attempt"])
    for attempt, span in enumerate(attempts, 1):
        assert span["context"]["trace_id"] == f"0x{TRACE_ID}"  # the worker's spans, in the request's trace
        assert span["parent_id"] == enqueue_span["context"]["span_id"]
        assert span["attributes"].items() >= {"workqueue.job_id": job_id, "workqueue.type": "traced",
                                              "workqueue.queue": "default", "workqueue.attempt": attempt}.items()
    assert [s["attributes"]["workqueue.outcome"] for s in attempts] == ["retrying", "succeeded"]
    owns = [s for s in console_spans(worker.read_stdout()) if s["name"] == "testtasks.traced"]
    assert sorted(s["parent_id"] for s in owns) == sorted(s["context"]["span_id"] for s in attempts)
