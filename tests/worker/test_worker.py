"""The worker role, in process: jobs go in through POST /enqueue and are observed through
GET /jobs/{id}, GET /metrics and the event log, on a real redis-server."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import async_wait_for, inline_task, read_log
from tests.support import enqueue, get_job, job_key, key, metrics, streams, wait_status
from workqueue.api.state import SETTINGS
from workqueue.store.keys import GROUP

# Every test here runs on one server, on the Redis Cluster and on the Sentinel group.
pytestmark = pytest.mark.topologies


RFC3339_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
FINISH_EVENTS = ("succeeded", "retrying", "dead")


# -- helpers -------------------------------------------------------------------------------------








def events(path: Path, job_id: str | None = None) -> list[dict[str, Any]]:
    """The log's complete lines (a line being written is not read), optionally for one job."""
    if not path.exists():
        return []
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    records = [orjson.loads(line) for line in data.splitlines() if line.strip()]
    return [r for r in records if job_id is None or r.get("job_id") == job_id]


async def wait_event(path: Path, event: str, job_id: str | None = None, count: int = 1) -> list[dict[str, Any]]:
    def found() -> list[dict[str, Any]]:
        matching = [r for r in events(path, job_id) if r["event"] == event]
        return matching if len(matching) >= count else []

    return list(await async_wait_for(found, 10, f"{count} {event!r} event(s) in the log"))


def ts(record: dict[str, Any]) -> float:
    return datetime.strptime(record["ts"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


# -- running handlers ----------------------------------------------------------------------------


async def test_async_handler_result_is_stored_and_job_succeeds(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    async def add(payload: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"sum": payload["a"] + payload["b"], "items": [1, "two", None]}

    c = await make_client(make_settings(redis_url=redis_url), {"add": inline_task("add", add)})
    job_id = await enqueue(c, type="add", payload={"a": 2, "b": 3})

    job = await wait_status(c, job_id, "succeeded")

    assert job["result"] == {"sum": 5, "items": [1, "two", None]}
    assert job["error"] is None
    assert job["attempts"] == 1
    for field in ("enqueued_at", "started_at", "finished_at"):
        assert RFC3339_MS_Z.match(job[field]), job
    assert job["enqueued_at"] <= job["started_at"] <= job["finished_at"]
    m = await metrics(c)
    assert (m["jobs_done"], m["jobs_failed"], m["total_jobs_in_queue"], m["jobs_active"]) == (1, 0, 0, 0)


async def test_handler_returning_none_succeeds_with_a_null_result(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    async def nothing(payload: dict[str, Any]) -> None:
        return None

    c = await make_client(make_settings(redis_url=redis_url), {"nothing": inline_task("nothing", nothing)})
    job = await wait_status(c, await enqueue(c, type="nothing"), "succeeded")
    assert job["result"] is None


async def test_plain_function_handler_runs_in_a_worker_thread_and_succeeds(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    threads: list[threading.Thread] = []

    def blocking(payload: dict[str, Any]) -> str:
        threads.append(threading.current_thread())
        time.sleep(0.05)  # the handler's own blocking work, which must not run on the event loop
        return payload["word"].upper()

    c = await make_client(make_settings(redis_url=redis_url), {"upper": inline_task("upper", blocking)})
    job_id = await enqueue(c, type="upper", payload={"word": "abc"})

    job = await wait_status(c, job_id, "succeeded")

    assert job["result"] == "ABC"
    assert len(threads) == 1
    assert threads[0] is not threading.main_thread()
    assert threads[0] is not threading.current_thread()
    assert threads[0].name.startswith("workqueue-job")


async def test_event_loop_keeps_serving_while_a_plain_function_handler_blocks(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    release = threading.Event()
    entered = threading.Event()

    def blocking(payload: dict[str, Any]) -> str:
        entered.set()
        assert release.wait(10), "the test never released the handler"
        return "done"

    c = await make_client(make_settings(redis_url=redis_url), {"block": inline_task("block", blocking)})
    job_id = await enqueue(c, type="block")
    try:
        await async_wait_for(entered.is_set, 10, "the handler to start")
        # The loop answers HTTP while the handler's thread is blocked.
        assert (await get_job(c, job_id))["status"] == "active"
        assert (await c.get("/healthz")).status == 200
    finally:
        release.set()
    await wait_status(c, job_id, "succeeded")


async def test_handler_with_ctx_parameter_receives_job_context_and_plugin_settings(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    async def with_ctx(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"job_id": ctx.job_id, "attempt": ctx.attempt, "queue": ctx.queue, "type": ctx.type,
                "settings": dict(ctx.settings)}

    def plain_with_ctx(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"job_id": ctx.job_id, "settings": dict(ctx.settings)}

    settings = make_settings(redis_url=redis_url, plugins={"t": {"k": "v", "n": 2}})
    c = await make_client(settings, {"t": inline_task("t", with_ctx), "p": inline_task("p", plain_with_ctx)})
    job_id = await enqueue(c, type="t", payload={"x": 1})
    plain_id = await enqueue(c, type="p")

    job = await wait_status(c, job_id, "succeeded")
    plain = await wait_status(c, plain_id, "succeeded")

    assert job["result"] == {"job_id": job_id, "attempt": 1, "queue": "default", "type": "t",
                             "settings": {"k": "v", "n": 2}}
    assert plain["result"] == {"job_id": plain_id, "settings": {}}  # no [plugins.p] table


# -- failures, retries, dead jobs ---------------------------------------------------------------


async def test_failing_attempts_are_retried_with_backoff_until_success(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    attempts: list[float] = []

    async def flaky(payload: dict[str, Any]) -> str:
        attempts.append(time.time())
        if len(attempts) < 3:
            raise ConnectionError(f"flaky failure {len(attempts)}")
        return "third time lucky"

    settings = make_settings(redis_url=redis_url, backoff_base=0.2, backoff_max=0.4)
    c = await make_client(settings, {"flaky": inline_task("flaky", flaky)})
    job_id = await enqueue(c, type="flaky", retries=3)

    job = await wait_status(c, job_id, "succeeded")
    await wait_event(tmp_path / "logs.txt", "succeeded", job_id)

    assert job["attempts"] == 3
    assert job["result"] == "third time lucky"
    log = events(tmp_path / "logs.txt", job_id)
    finishes = [r for r in log if r["event"] in FINISH_EVENTS]
    assert [(r["event"], r["attempt"]) for r in finishes] == [("retrying", 1), ("retrying", 2), ("succeeded", 3)]
    assert "ConnectionError: flaky failure 1" in finishes[0]["error"]
    assert "ConnectionError: flaky failure 2" in finishes[1]["error"]
    starts = [ts(r) for r in log if r["event"] == "started"]
    assert len(starts) == 3
    # Each retry waits at least half its backoff ceiling, which is at least backoff_base / 2 = 0.1 s
    # (less 2 ms for the millisecond resolution of the timestamps).
    for earlier, later in zip(starts, starts[1:]):
        assert later - earlier >= 0.1 - 0.002, starts
    for earlier, later in zip(attempts, attempts[1:]):
        assert later - earlier >= 0.1 - 0.002, attempts
    m = await metrics(c)
    assert (m["jobs_done"], m["jobs_failed"], m["jobs_retried"], m["jobs_dead"]) == (1, 0, 2, 0)


async def test_job_failing_every_attempt_is_dead_after_retries_plus_one_attempts(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    calls = 0

    async def broken(payload: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        raise ValueError(f"bad input on call {calls}")

    c = await make_client(make_settings(redis_url=redis_url), {"broken": inline_task("broken", broken)})
    job_id = await enqueue(c, type="broken", retries=2)

    job = await wait_status(c, job_id, "dead")
    (dead,) = await wait_event(tmp_path / "logs.txt", "dead", job_id)

    assert calls == 3
    assert job["attempts"] == 3
    assert "ValueError: bad input on call 3" in job["error"]
    assert job["result"] is None
    assert RFC3339_MS_Z.match(job["finished_at"])
    assert dead["level"] == "error"
    assert dead["attempt"] == 3
    assert "ValueError: bad input on call 3" in dead["error"]
    assert [r["event"] for r in events(tmp_path / "logs.txt", job_id) if r["event"] in FINISH_EVENTS] == [
        "retrying", "retrying", "dead"]
    m = await metrics(c)
    assert m["jobs_failed"] == 1
    assert m["jobs_dead"] == 1
    assert m["jobs_done"] == 0
    assert m["total_jobs_in_queue"] == 0
    assert m["jobs_scheduled"] == 0


async def test_attempt_exceeding_its_timeout_fails_with_a_timeout_error_and_is_retried(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    calls = 0

    async def slow_then_fast(payload: dict[str, Any]) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(5)
        return "fast"

    c = await make_client(make_settings(redis_url=redis_url), {"slow": inline_task("slow", slow_then_fast)})
    started = time.monotonic()
    job_id = await enqueue(c, type="slow", retries=1, timeout=0.2)

    job = await wait_status(c, job_id, "succeeded")

    assert time.monotonic() - started < 4  # the first attempt was stopped, not waited out
    assert job["attempts"] == 2
    assert job["error"] is None  # a job that succeeded shows its result, not an earlier error
    retrying = [e for e in read_log(Path(c.server.app[SETTINGS].log_path)) if e["event"] == "retrying"]
    assert "timeout" in retrying[0]["error"].lower()


async def test_attempt_exceeding_its_timeout_with_no_retries_is_dead(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    cancelled = asyncio.Event()

    async def sleeper(payload: dict[str, Any]) -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    c = await make_client(make_settings(redis_url=redis_url), {"sleeper": inline_task("sleeper", sleeper)})
    job_id = await enqueue(c, type="sleeper", retries=0, timeout=0.2)

    job = await wait_status(c, job_id, "dead")

    assert cancelled.is_set()  # the handler was cancelled, not left running
    assert job["attempts"] == 1
    assert "TimeoutError" in job["error"]
    assert "timeout" in job["error"].lower() and "0.2" in job["error"]
    (dead,) = await wait_event(tmp_path / "logs.txt", "dead", job_id)
    assert dead["error"] == job["error"]
    assert 150 <= dead["duration_ms"] < 4000
    assert (await metrics(c))["jobs_failed"] == 1


async def test_plain_function_handler_exceeding_its_timeout_is_dead(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    release = threading.Event()

    def stuck(payload: dict[str, Any]) -> None:
        release.wait(10)

    c = await make_client(make_settings(redis_url=redis_url), {"stuck": inline_task("stuck", stuck)})
    try:
        job_id = await enqueue(c, type="stuck", retries=0, timeout=0.2)
        job = await wait_status(c, job_id, "dead")
    finally:
        release.set()  # let the abandoned thread end
    assert "timeout" in job["error"].lower()


async def test_a_timeout_error_raised_by_the_handler_itself_is_reported_as_its_own_error(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    async def upstream(payload: dict[str, Any]) -> None:
        raise TimeoutError("smtp.example.com did not answer")

    c = await make_client(make_settings(redis_url=redis_url), {"upstream": inline_task("upstream", upstream)})
    job_id = await enqueue(c, type="upstream", retries=0, timeout=300)

    job = await wait_status(c, job_id, "dead")

    # The job's 300 s timeout was not exceeded; the handler's own error must be kept.
    assert "smtp.example.com did not answer" in job["error"], job["error"]


async def test_handler_returning_a_non_json_serialisable_result_fails_the_job_and_the_worker_continues(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    async def returns_set(payload: dict[str, Any]) -> set[int]:
        return {1, 2}

    async def fine(payload: dict[str, Any]) -> str:
        return "ok"

    tasks = {"bad": inline_task("bad", returns_set), "fine": inline_task("fine", fine)}
    c = await make_client(make_settings(redis_url=redis_url), tasks)
    bad_id = await enqueue(c, type="bad", retries=0)

    bad = await wait_status(c, bad_id, "dead")

    assert "not JSON serializable" in bad["error"] and "set" in bad["error"], bad["error"]
    assert bad["result"] is None
    fine_id = await enqueue(c, type="fine")
    assert (await wait_status(c, fine_id, "succeeded"))["result"] == "ok"
    assert (await c.get("/healthz")).status == 200
    assert not [r for r in events(tmp_path / "logs.txt") if r["event"] == "http_error"]


async def test_unknown_task_type_at_the_worker_makes_the_job_dead_and_the_worker_continues(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    ran: list[str] = []

    async def x(payload: dict[str, Any]) -> None:
        ran.append("x")

    async def y(payload: dict[str, Any]) -> str:
        ran.append("y")
        return "y done"

    producer = await make_client(
        make_settings(redis_url=redis_url, role="producer", log_path=str(tmp_path / "producer.txt")),
        {"x": inline_task("x", x), "y": inline_task("y", y)},
    )
    await make_client(
        make_settings(redis_url=redis_url, role="worker", log_path=str(tmp_path / "worker.txt")),
        {"y": inline_task("y", y)},
    )
    x_id = await enqueue(producer, type="x", retries=3)

    job = await wait_status(producer, x_id, "dead")

    assert "'x'" in job["error"] and "unknown task type" in job["error"], job["error"]
    assert job["attempts"] == 1  # retrying cannot help: no retry is spent on it
    assert (await metrics(producer))["jobs_failed"] == 1
    (dead,) = await wait_event(tmp_path / "worker.txt", "dead", x_id)
    assert dead["type"] == "x"
    y_id = await enqueue(producer, type="y")
    assert (await wait_status(producer, y_id, "succeeded"))["result"] == "y done"
    assert ran == ["y"]


# -- concurrency ---------------------------------------------------------------------------------


async def test_concurrency_4_runs_exactly_4_jobs_at_once_and_then_all_finish(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    gate = asyncio.Event()
    running = 0
    peak = 0
    started = 0

    async def gated(payload: dict[str, Any]) -> int:
        nonlocal running, peak, started
        running += 1
        started += 1
        peak = max(peak, running)
        try:
            await gate.wait()
        finally:
            running -= 1
        return int(payload["n"])

    c = await make_client(make_settings(redis_url=redis_url, concurrency=4), {"gated": inline_task("gated", gated)})
    response = await c.post("/enqueue", json=[{"type": "gated", "payload": {"n": i}} for i in range(8)])
    assert response.status == 202
    ids = [j["id"] for j in await response.json()]
    try:
        await async_wait_for(lambda: running == 4, 10, "4 jobs to be running")
        # The other 4 are still undelivered on the stream, so no fifth can be running.
        m = await metrics(c)
        assert (m["jobs_active"], m["total_jobs_in_queue"]) == (4, 4)
        assert running == 4
        statuses = sorted([(await get_job(c, i))["status"] for i in ids])
        assert statuses == ["active"] * 4 + ["queued"] * 4
    finally:
        gate.set()
    results = [(await wait_status(c, i, "succeeded"))["result"] for i in ids]

    assert results == list(range(8))
    assert started == 8
    assert peak == 4
    assert (await metrics(c))["jobs_done"] == 8


# -- the log ----------------------------------------------------------------------------------------


async def test_finish_events_carry_ts_level_job_type_queue_attempt_and_duration_and_started_has_wait(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    calls = 0

    async def once_flaky(payload: dict[str, Any]) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    async def always_fails(payload: dict[str, Any]) -> None:
        raise RuntimeError("never works")

    tasks = {"flaky": inline_task("flaky", once_flaky), "doomed": inline_task("doomed", always_fails)}
    c = await make_client(make_settings(redis_url=redis_url), tasks)
    flaky_id = await enqueue(c, type="flaky", retries=1, queue="default")
    doomed_id = await enqueue(c, type="doomed", retries=0)
    await wait_status(c, flaky_id, "succeeded")
    await wait_status(c, doomed_id, "dead")
    await wait_event(tmp_path / "logs.txt", "succeeded", flaky_id)
    await wait_event(tmp_path / "logs.txt", "dead", doomed_id)

    log = events(tmp_path / "logs.txt")
    by_job = {(r["event"], r.get("job_id")): r for r in log}
    retrying = by_job[("retrying", flaky_id)]
    succeeded = by_job[("succeeded", flaky_id)]
    dead = by_job[("dead", doomed_id)]
    for record, job_id, job_type, attempt, level in (
        (retrying, flaky_id, "flaky", 1, "warning"),
        (succeeded, flaky_id, "flaky", 2, "info"),
        (dead, doomed_id, "doomed", 1, "error"),
    ):
        assert RFC3339_MS_Z.match(record["ts"]), record
        assert record["level"] == level, record
        assert record["job_id"] == job_id
        assert record["type"] == job_type
        assert record["queue"] == "default"
        assert record["attempt"] == attempt
        assert isinstance(record["duration_ms"], (int, float)) and record["duration_ms"] >= 0, record
    assert "RuntimeError: first attempt fails" in retrying["error"]
    assert "RuntimeError: never works" in dead["error"]
    assert "error" not in succeeded
    started = [r for r in log if r["event"] == "started"]
    assert len(started) == 3
    for record in started:
        assert RFC3339_MS_Z.match(record["ts"])
        assert record["job_id"] in (flaky_id, doomed_id)
        assert record["queue"] == "default"
        assert isinstance(record["wait_ms"], (int, float)) and record["wait_ms"] >= 0, record
    enqueued = [r for r in log if r["event"] == "enqueued"]
    assert {r["job_id"] for r in enqueued} == {flaky_id, doomed_id}


# -- shutdown ------------------------------------------------------------------------------------


async def test_closing_the_app_lets_a_running_job_finish_and_the_log_ends_with_worker_and_service_stopped(
    make_client: Any, make_settings: Any, redis_url: str, redis_sync: Any, tmp_path: Path
) -> None:
    entered = asyncio.Event()
    finished: list[str] = []

    async def short(payload: dict[str, Any]) -> str:
        entered.set()
        await asyncio.sleep(0.3)
        finished.append(payload["name"])
        return "finished"

    c = await make_client(make_settings(redis_url=redis_url, grace_period=5), {"short": inline_task("short", short)})
    job_id = await enqueue(c, type="short", payload={"name": "j"})
    await async_wait_for(entered.is_set, 10, "the handler to start")

    await c.close()

    assert finished == ["j"]
    r = redis_sync
    record = {k.decode(): v.decode() for k, v in r.hgetall(job_key("default", job_id)).items()}
    assert record["status"] == "succeeded", record
    assert orjson.loads(record["result"]) == "finished"
    assert sum(r.xlen(s) for s in streams("default")) == 0
    assert sum(r.xpending(s, GROUP)["pending"] for s in streams("default")) == 0
    assert int(r.hget(key("default", "stats"), "done") or 0) == 1
    assert r.hget(key("default", "stats"), "released") is None  # nothing handed back
    log = events(tmp_path / "logs.txt")
    assert [r["event"] for r in log][-2:] == ["worker_stopped", "service_stopped"]
    assert [r["event"] for r in events(tmp_path / "logs.txt", job_id)].count("succeeded") == 1
    assert [r for r in log if r["event"] == "worker_stopped"][0]["released"] == 0


async def test_closing_an_idle_app_is_quick_and_logs_the_stop_events(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    async def noop(payload: dict[str, Any]) -> None:
        return None

    c = await make_client(make_settings(redis_url=redis_url), {"noop": inline_task("noop", noop)})
    await wait_event(tmp_path / "logs.txt", "worker_started")
    began = time.monotonic()
    await c.close()
    assert time.monotonic() - began < 3
    assert [r["event"] for r in events(tmp_path / "logs.txt")][-2:] == ["worker_stopped", "service_stopped"]


async def test_a_job_outliving_the_grace_period_is_handed_back_and_the_next_worker_runs_it(
    make_client: Any, make_settings: Any, redis_url: str, redis_sync: Any, tmp_path: Path
) -> None:
    entered = asyncio.Event()

    async def endless(payload: dict[str, Any]) -> str:
        entered.set()
        await asyncio.sleep(10)
        return "too late"

    async def quick(payload: dict[str, Any]) -> str:
        return f"quick {payload['n']}"

    first = await make_client(make_settings(redis_url=redis_url, grace_period=0.2),
                              {"work": inline_task("work", endless)})
    job_id = await enqueue(first, type="work", payload={"n": 7}, retries=0)
    await async_wait_for(entered.is_set, 10, "the handler to start")

    began = time.monotonic()
    await first.close()
    assert time.monotonic() - began < 5  # the grace period, not the handler's 10 s

    r = redis_sync
    assert r.hget(job_key("default", job_id), "status") == b"queued"
    # Handed-back jobs wait on the highest priority level, to start before anything else.
    top = streams("default")[-1]
    assert sum(r.xlen(s) for s in streams("default")) == 1
    assert sum(r.xpending(s, GROUP)["pending"] for s in streams("default")) == 0
    (entry,) = r.xrange(top)
    assert entry[1][b"id"].decode() == job_id
    assert int(r.hget(key("default", "stats"), "released")) == 1
    assert int(r.hget(key("default", "stats"), "failed") or 0) == 0
    log = events(tmp_path / "logs.txt")
    assert [r["event"] for r in log][-2:] == ["worker_stopped", "service_stopped"]
    assert [r for r in log if r["event"] == "worker_stopped"][0]["released"] == 1
    assert not [r for r in events(tmp_path / "logs.txt", job_id) if r["event"] in FINISH_EVENTS]

    second = await make_client(make_settings(redis_url=redis_url), {"work": inline_task("work", quick)})
    job = await wait_status(second, job_id, "succeeded")

    assert job["result"] == "quick 7"
    assert job["attempts"] == 1  # the handed-back attempt did not count against its retries
    m = await metrics(second)
    assert (m["jobs_done"], m["jobs_failed"], m["total_jobs_in_queue"]) == (1, 0, 0)


async def test_a_handlers_error_is_stored_without_source_paths_and_its_traceback_goes_to_the_log(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    async def broken(payload: dict[str, Any]) -> None:
        raise ValueError("amount: must be positive")

    c = await make_client(make_settings(redis_url=redis_url), {"broken": inline_task("broken", broken)})
    job_id = await enqueue(c, type="broken", retries=1)
    job = await wait_status(c, job_id, "dead")
    # What clients see names the problem, never a file or a line of the service or a plugin.
    assert job["error"] == "ValueError: amount: must be positive"
    lines = await async_wait_for(lambda: [e for e in read_log(tmp_path / "logs.txt")
                                          if e["event"] in ("retrying", "dead") and e.get("job_id") == job_id],
                                 5, "the retrying and dead lines")
    assert [e["event"] for e in lines] == ["retrying", "dead"]
    for line in lines:
        assert line["error"] == job["error"]
        assert "Traceback" in line["traceback"] and "test_worker.py" in line["traceback"]
        assert 'raise ValueError("amount: must be positive")' in line["traceback"]
