"""Job control through the HTTP API (issue 4): delays, priorities, named queues, idempotency keys,
cancellation (in process and across two worker processes), the dead-letter store, retention and
backpressure. Everything runs against a real redis-server; jobs go in through POST /enqueue and
are observed through GET /jobs/{id}, GET /metrics and GET /dead (one test also reads a job record's
microsecond start time straight from Redis, finer than the API's milliseconds)."""

from __future__ import annotations

import asyncio
import random
import statistics
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Service, async_wait_for, inline_task, read_log
from tests.support import get_job, job_key, metrics, wait_status

# Every test here runs on one server, on the Redis Cluster and on the Sentinel group.
pytestmark = pytest.mark.topologies


# -- helpers -------------------------------------------------------------------------------------


async def post(client: Any, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    response = await client.post(path, json=body, headers=headers)
    return response.status, await response.json()


async def enqueue(client: Any, headers: dict[str, str] | None = None, **job: Any) -> dict[str, Any]:
    """POST one job that must be accepted; the answer (id, status, type, queue)."""
    job.setdefault("payload", {})
    status, answer = await post(client, "/enqueue", job, headers)
    assert status == 202, answer
    return dict(answer)








async def dead_list(client: Any, **query: Any) -> dict[str, Any]:
    response = await client.get("/dead", params={k: str(v) for k, v in query.items()})
    assert response.status == 200, await response.text()
    return dict(await response.json())


def epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


class Gate:
    """An async task type that holds its worker slot until released: `entered` is set once a job of
    it runs, and every job of it waits for `release`."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.ran: list[str] = []

    async def handler(self, payload: dict[str, Any], ctx: Any) -> str:
        self.ran.append(ctx.job_id)
        self.entered.set()
        await self.release.wait()
        return "released"

    def task(self, name: str = "gate") -> Any:
        return inline_task(name, self.handler)


class Recorder:
    """An async task type that notes the order in which its jobs ran."""

    def __init__(self) -> None:
        self.ran: list[Any] = []

    async def handler(self, payload: dict[str, Any], ctx: Any) -> Any:
        self.ran.append(payload.get("tag", ctx.job_id))
        return payload.get("tag")

    def task(self, name: str = "record") -> Any:
        return inline_task(name, self.handler)


async def hold_the_only_slot(client: Any, gate: Gate, **job: Any) -> str:
    """Start a gated job and wait until it runs, so later jobs wait behind it."""
    answer = await enqueue(client, type="gate", **job)
    await async_wait_for(gate.entered.is_set, 10, "the gate job to start")
    return str(answer["id"])


# -- 1. delayed jobs ---------------------------------------------------------------------------


async def test_delay_makes_the_job_scheduled_and_it_starts_no_earlier_than_its_run_at(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    recorder = Recorder()
    c = await make_client(make_settings(redis_url=redis_url), {"record": recorder.task()})
    before = time.time()
    answer = await enqueue(c, type="record", delay=0.4)

    assert answer["status"] == "scheduled"
    waiting = await get_job(c, answer["id"])
    assert waiting["status"] == "scheduled"
    run_at = epoch(waiting["run_at"])
    assert before + 0.4 - 0.001 <= run_at <= time.time() + 0.4
    assert (await metrics(c))["jobs_scheduled"] == 1

    done = await wait_status(c, answer["id"], "succeeded")
    assert epoch(done["started_at"]) >= run_at
    assert (await metrics(c))["jobs_scheduled"] == 0


def rfc3339_z(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339_plus2(moment: float) -> str:
    return datetime.fromtimestamp(moment, timezone(timedelta(hours=2))).isoformat(timespec="milliseconds")


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(rfc3339_z, id="rfc3339-Z"),
        pytest.param(rfc3339_plus2, id="rfc3339-offset"),
        pytest.param(lambda t: round(t, 3), id="epoch-float"),
        pytest.param(lambda t: int(t) + 1, id="epoch-int"),
    ],
)
async def test_run_at_as_rfc3339_or_epoch_seconds_is_scheduled_and_starts_no_earlier(
    make_client: Any, make_settings: Any, redis_url: str, form: Any
) -> None:
    recorder = Recorder()
    c = await make_client(make_settings(redis_url=redis_url), {"record": recorder.task()})
    value = form(time.time() + 0.5)
    wanted = value if isinstance(value, (int, float)) else epoch(value)

    answer = await enqueue(c, type="record", run_at=value)

    assert answer["status"] == "scheduled"
    assert abs(epoch((await get_job(c, answer["id"]))["run_at"]) - wanted) < 0.001
    done = await wait_status(c, answer["id"], "succeeded")
    assert epoch(done["started_at"]) >= wanted


async def test_run_at_in_the_past_and_delay_0_queue_the_job_at_once(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, role="producer"), {"record": Recorder().task()})
    assert (await enqueue(c, type="record", run_at=time.time() - 60))["status"] == "queued"
    assert (await enqueue(c, type="record", run_at="2020-01-01T00:00:00Z"))["status"] == "queued"
    assert (await enqueue(c, type="record", delay=0))["status"] == "queued"
    assert (await metrics(c))["total_jobs_in_queue"] == 3


async def test_200_delayed_jobs_never_start_before_run_at_and_p99_lateness_is_under_1s(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    recorder = Recorder()
    c = await make_client(make_settings(redis_url=redis_url, concurrency=20), {"record": recorder.task()})
    rng = random.Random(4)
    jobs = [{"type": "record", "payload": {}, "delay": round(rng.uniform(0.5, 1.5), 4)} for _ in range(200)]
    status, answers = await post(c, "/enqueue", jobs)
    assert status == 202, answers
    assert {a["status"] for a in answers} == {"scheduled"}
    ids = [a["id"] for a in answers]

    async def all_done() -> bool:
        return (await metrics(c))["jobs_done"] == 200

    await async_wait_for(all_done, 20, "all 200 delayed jobs to succeed", interval=0.1)
    finished = await asyncio.gather(*(get_job(c, i) for i in ids))
    lateness = sorted(epoch(j["started_at"]) - epoch(j["run_at"]) for j in finished)
    p50 = statistics.median(lateness)
    p99 = lateness[int(len(lateness) * 0.99) - 1]
    print(f"\ndelayed-job lateness over {len(lateness)} jobs: min {lateness[0] * 1000:.1f} ms, "
          f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {lateness[-1] * 1000:.1f} ms")
    assert lateness[0] >= 0, f"a job started {-lateness[0] * 1000:.1f} ms before its run_at"
    assert p99 < 1.0


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"delay": -1}, "delay"),
        ({"delay": "5"}, "delay"),
        ({"delay": True}, "delay"),
        ({"delay": 10**9}, "delay"),  # more than a year
        ({"delay": 1, "run_at": "2030-01-01T00:00:00Z"}, "delay"),
        ({"run_at": "2030-01-01T00:00:00"}, "run_at"),  # naive: no UTC offset
        ({"run_at": "next tuesday"}, "run_at"),
        ({"run_at": ""}, "run_at"),
        ({"run_at": -5}, "run_at"),
        ({"run_at": [2030]}, "run_at"),
        ({"run_at": "2999-01-01T00:00:00Z"}, "run_at"),  # more than a year ahead
    ],
)
async def test_invalid_delay_or_run_at_is_422_naming_the_field_and_enqueues_nothing(
    make_client: Any, make_settings: Any, redis_url: str, options: dict[str, Any], field: str
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, role="producer"), {"record": Recorder().task()})
    status, answer = await post(c, "/enqueue", {"type": "record", "payload": {}, **options})

    assert status == 422, answer
    assert answer["error"].startswith(f"{field}:"), answer
    assert (await metrics(c))["jobs_enqueued"] == 0


async def test_run_at_with_sub_millisecond_precision_never_starts_even_slightly_early(
    make_client: Any, make_settings: Any, redis_url: str, redis_sync: Any
) -> None:
    """The hard property at the store's own resolution (microseconds), for run_at values that fall
    just before a millisecond boundary: rounding them down would make the job due early."""
    c = await make_client(make_settings(redis_url=redis_url, concurrency=20), {"record": Recorder().task()})
    start = time.time() + 0.3
    wanted = [int((start + i * 0.005) * 1000) / 1000 + 0.00095 for i in range(100)]
    status, answers = await post(c, "/enqueue", [{"type": "record", "payload": {}, "run_at": t} for t in wanted])
    assert status == 202, answers

    async def all_done() -> bool:
        return (await metrics(c))["jobs_done"] == len(wanted)

    await async_wait_for(all_done, 20, "all delayed jobs to succeed", interval=0.05)
    r = redis_sync
    started = [float(r.hget(job_key("default", a["id"]), "started_at")) for a in answers]
    early = sorted((s - t) * 1000 for s, t in zip(started, wanted) if s < t - 1e-6)
    assert not early, f"{len(early)} of {len(wanted)} jobs started before their run_at, by up to {-early[0]:.3f} ms"


# -- 2. priorities -------------------------------------------------------------------------------


async def test_with_one_slot_waiting_jobs_run_highest_priority_first_and_fifo_within_a_level(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    gate, recorder = Gate(), Recorder()
    # Strict order: the fairness round (lowest priority first) is pushed out of reach.
    settings = make_settings(redis_url=redis_url, concurrency=1, priority_fairness=1_000_000)
    c = await make_client(settings, {"gate": gate.task(), "record": recorder.task()})
    await hold_the_only_slot(c, gate)
    priorities = [0, 5, 9, 1, 9, 0]
    for n, priority in enumerate(priorities):
        await enqueue(c, type="record", priority=priority, payload={"tag": [priority, n]})
    assert (await metrics(c))["total_jobs_in_queue"] == 6

    gate.release.set()

    async def all_ran() -> bool:
        return len(recorder.ran) == 6

    await async_wait_for(all_ran, 10, "the six jobs to run")
    assert recorder.ran == [[9, 2], [9, 4], [5, 1], [1, 3], [0, 0], [0, 5]]


async def test_priority_fairness_lets_a_low_priority_job_through_a_flood_of_high_ones(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    gate, recorder = Gate(), Recorder()
    settings = make_settings(redis_url=redis_url, concurrency=1, priority_fairness=3)
    c = await make_client(settings, {"gate": gate.task(), "record": recorder.task()})
    await hold_the_only_slot(c, gate)
    await enqueue(c, type="record", priority=0, payload={"tag": "low"})
    status, _ = await post(c, "/enqueue", [{"type": "record", "priority": 9, "payload": {"tag": "high"}}] * 20)
    assert status == 202

    gate.release.set()

    async def all_ran() -> bool:
        return len(recorder.ran) == 21

    await async_wait_for(all_ran, 10, "the 21 jobs to run")
    # Every third fetch reads the lowest priority first.
    assert recorder.ran.index("low") < 3, recorder.ran


@pytest.mark.parametrize("priority", [-1, 10, 1.5, "9", True, None])
async def test_priority_that_is_not_an_integer_0_to_9_is_422_naming_priority(
    make_client: Any, make_settings: Any, redis_url: str, priority: Any
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, role="producer"), {"record": Recorder().task()})
    status, answer = await post(c, "/enqueue", {"type": "record", "payload": {}, "priority": priority})
    assert status == 422, answer
    assert answer["error"].startswith("priority:"), answer
    assert (await metrics(c))["jobs_enqueued"] == 0


# -- 3. named queues -----------------------------------------------------------------------------


async def test_worker_serving_weighted_queues_runs_jobs_of_both_favouring_the_heavier(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    gate, recorder = Gate(), Recorder()
    settings = make_settings(redis_url=redis_url, concurrency=1, queues=["high:3", "low:1"])
    c = await make_client(settings, {"gate": gate.task(), "record": recorder.task()})
    await hold_the_only_slot(c, gate, queue="high")
    for queue in ("high", "low"):
        jobs = [{"type": "record", "queue": queue, "payload": {"tag": queue}}] * 60
        status, answers = await post(c, "/enqueue", jobs)
        assert status == 202, answers
        assert {a["queue"] for a in answers} == {queue}

    gate.release.set()

    async def all_ran() -> bool:
        return len(recorder.ran) == 120

    await async_wait_for(all_ran, 20, "the 120 jobs to run")
    first = recorder.ran[:60]
    # Each fetch picks "high" first with probability 3/4: 45 of 60 expected, fewer than 31 has a
    # probability of about 1e-5; "low" getting none has a probability of 0.75**60 ~ 3e-8.
    assert first.count("high") > 30, first
    assert first.count("low") >= 1, first
    m = await metrics(c)
    assert (m["queues"]["high"]["done"], m["queues"]["low"]["done"]) == (61, 60)


async def test_worker_serving_only_another_queue_never_runs_a_default_job(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    recorder = Recorder()
    c = await make_client(make_settings(redis_url=redis_url, queues=["other"]), {"record": recorder.task()})
    stranded = await enqueue(c, type="record", payload={"tag": "default"})
    served = await enqueue(c, type="record", queue="other", payload={"tag": "other"})
    assert stranded["queue"] == "default" and served["queue"] == "other"

    await wait_status(c, served["id"], "succeeded")

    assert recorder.ran == ["other"]
    assert (await get_job(c, stranded["id"]))["status"] == "queued"
    m = await metrics(c)
    assert m["queues"]["default"]["waiting"] == 1
    assert m["queues"]["other"]["done"] == 1


# -- 4. idempotency ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param("field", "field", id="key-field"),
        pytest.param("header", "header", id="Idempotency-Key-header"),
        pytest.param("header", "field", id="header-then-field"),
        pytest.param("field", "header", id="field-then-header"),
    ],
)
async def test_repeat_with_the_same_key_is_200_with_the_same_id_and_duplicate_true_and_creates_nothing(
    make_client: Any, make_settings: Any, redis_url: str, first: str, second: str
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, role="producer"), {"record": Recorder().task()})

    async def send(how: str) -> tuple[int, Any]:
        body = {"type": "record", "payload": {"n": 1}}
        if how == "field":
            return await post(c, "/enqueue", {**body, "key": "order-42"})
        return await post(c, "/enqueue", body, {"Idempotency-Key": "order-42"})

    status, original = await send(first)
    assert status == 202, original
    assert "duplicate" not in original
    status, repeat = await send(second)

    assert status == 200, repeat
    assert repeat == {"id": original["id"], "status": "queued", "type": "record", "queue": "default", "duplicate": True}
    m = await metrics(c)
    assert (m["jobs_enqueued"], m["total_jobs_in_queue"]) == (1, 1)


@pytest.mark.parametrize(
    "changed",
    [{"payload": {"n": 2}}, {"type": "other"}],
    ids=["different-payload", "different-type"],
)
async def test_same_key_for_different_work_is_409_naming_the_key_and_the_existing_job(
    make_client: Any, make_settings: Any, redis_url: str, changed: dict[str, Any]
) -> None:
    tasks = {"record": Recorder().task(), "other": Recorder().task("other")}
    c = await make_client(make_settings(redis_url=redis_url, role="producer"), tasks)
    original = await enqueue(c, type="record", payload={"n": 1}, key="order-42")

    status, answer = await post(c, "/enqueue", {"type": "record", "payload": {"n": 1}, "key": "order-42", **changed})

    assert status == 409, answer
    message = answer["error"]
    assert message.startswith("key:"), message
    assert "order-42" in message and original["id"] in message, message
    assert "different" in message, message
    assert (await metrics(c))["jobs_enqueued"] == 1


async def test_idempotency_key_header_that_contradicts_the_key_field_or_comes_with_an_array_is_422(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, role="producer"), {"record": Recorder().task()})
    job = {"type": "record", "payload": {}}
    status, answer = await post(c, "/enqueue", {**job, "key": "a"}, {"Idempotency-Key": "b"})
    assert status == 422 and answer["error"].startswith("key:"), answer
    status, answer = await post(c, "/enqueue", [job, job], {"Idempotency-Key": "b"})
    assert status == 422 and answer["error"].startswith("Idempotency-Key:"), answer
    status, answer = await post(c, "/enqueue", {**job, "key": ""})
    assert status == 422 and answer["error"].startswith("key:"), answer
    assert (await metrics(c))["jobs_enqueued"] == 0


async def burst(
    client: Any, count: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> list[tuple[int, Any]]:
    """`count` POST /enqueue requests at once, each on its own connection."""
    url = client.make_url("/enqueue")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> tuple[int, Any]:
            async with session.post(url, json=body, headers=headers) as response:
                return response.status, await response.json()

        return list(await asyncio.gather(*(one() for _ in range(count))))


async def test_1000_concurrent_posts_with_one_key_create_one_job_whether_it_is_queued_running_or_finished(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    gate = Gate()
    started, finish = asyncio.Event(), asyncio.Event()

    async def keyed(payload: dict[str, Any]) -> str:
        started.set()
        await finish.wait()
        return "once"

    settings = make_settings(redis_url=redis_url, concurrency=1)
    c = await make_client(settings, {"gate": gate.task(), "keyed": inline_task("keyed", keyed)})
    await hold_the_only_slot(c, gate)
    body = {"type": "keyed", "payload": {"order": 42}}
    headers = {"Idempotency-Key": "order-42"}

    async def check(answers: list[tuple[int, Any]], status: str, creators: int) -> str:
        assert len(answers) == 1000
        codes = sorted(code for code, _ in answers)
        refused = next((answer for code, answer in answers if code not in (200, 202)), None)
        assert codes == [200] * (1000 - creators) + [202] * creators, (
            {code: codes.count(code) for code in codes}, refused)
        ids = {answer["id"] for _, answer in answers}
        assert len(ids) == 1, ids
        assert {answer["status"] for code, answer in answers if code == 200} <= {status}
        assert all(answer.get("duplicate") is True for code, answer in answers if code == 200)
        (job_id,) = ids
        m = await metrics(c)
        assert m["jobs_enqueued"] == 2, "exactly one job for the key (plus the gate job)"
        return str(job_id)

    # Queued: the race to create it, one slot held so it stays waiting.
    job_id = await check(await burst(c, 1000, body, headers), "queued", creators=1)
    assert (await get_job(c, job_id))["status"] == "queued"

    gate.release.set()
    await async_wait_for(started.is_set, 10, "the keyed job to start")
    assert (await check(await burst(c, 1000, body, headers), "active", creators=0)) == job_id

    finish.set()
    await wait_status(c, job_id, "succeeded")
    assert (await check(await burst(c, 1000, {**body, "key": "order-42"}), "succeeded", creators=0)) == job_id
    assert (await metrics(c))["jobs_done"] == 2


async def test_key_is_forgotten_idempotency_ttl_after_its_job_ended_and_then_creates_a_new_job(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    recorder = Recorder()
    c = await make_client(make_settings(redis_url=redis_url, idempotency_ttl=0.5), {"record": recorder.task()})
    body = {"type": "record", "payload": {}, "key": "nightly"}
    first = await enqueue(c, **body)
    ended = epoch((await wait_status(c, first["id"], "succeeded"))["finished_at"])

    async def new_job() -> Any:
        status, answer = await post(c, "/enqueue", body)
        assert status in (200, 202), answer
        return answer if status == 202 else None

    second = await async_wait_for(new_job, 5, "the key to expire")
    assert time.time() >= ended + 0.5 - 0.002, "the key was forgotten before its TTL had passed"
    assert second["id"] != first["id"]
    await wait_status(c, second["id"], "succeeded")
    assert (await get_job(c, first["id"]))["status"] == "succeeded"  # the old record is still there


# -- 5. cancellation -----------------------------------------------------------------------------


async def cancel(client: Any, job_id: str, how: str = "post") -> tuple[int, Any]:
    if how == "post":
        response = await client.post(f"/jobs/{job_id}/cancel")
    else:
        response = await client.delete(f"/jobs/{job_id}")
    return response.status, await response.json()


@pytest.mark.parametrize("how", ["post", "delete"])
async def test_cancelled_queued_job_never_runs_and_is_cancelled(
    make_client: Any, make_settings: Any, redis_url: str, how: str
) -> None:
    gate, recorder = Gate(), Recorder()
    c = await make_client(make_settings(redis_url=redis_url, concurrency=1),
                          {"gate": gate.task(), "record": recorder.task()})
    await hold_the_only_slot(c, gate)
    victim = await enqueue(c, type="record", payload={"tag": "victim"})
    follower = await enqueue(c, type="record", payload={"tag": "follower"})

    status, answer = await cancel(c, victim["id"], how)

    assert status == 200, answer
    assert answer == {"id": victim["id"], "status": "cancelled", "previous_status": "queued"}
    job = await get_job(c, victim["id"])
    assert job["status"] == "cancelled" and job["finished_at"] is not None
    m = await metrics(c)
    assert (m["jobs_cancelled"], m["total_jobs_in_queue"]) == (1, 1)
    gate.release.set()
    # The follower was queued after the victim, so once it has run the victim had its chance.
    await wait_status(c, follower["id"], "succeeded")
    assert recorder.ran == ["follower"]
    assert (await get_job(c, victim["id"]))["status"] == "cancelled"


async def test_cancelled_scheduled_job_never_runs_and_is_cancelled(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    recorder = Recorder()
    c = await make_client(make_settings(redis_url=redis_url), {"record": recorder.task()})
    victim = await enqueue(c, type="record", delay=0.3, payload={"tag": "victim"})
    later = await enqueue(c, type="record", delay=0.5, payload={"tag": "later"})
    assert victim["status"] == "scheduled"

    status, answer = await cancel(c, victim["id"])

    assert status == 200, answer
    assert answer["previous_status"] == "scheduled" and answer["status"] == "cancelled"
    assert (await metrics(c))["jobs_scheduled"] == 1
    # The later job was due after the victim: once it has run, the victim's time had passed too.
    await wait_status(c, later["id"], "succeeded")
    assert recorder.ran == ["later"]
    job = await get_job(c, victim["id"])
    assert (job["status"], job["started_at"], job["attempts"]) == ("cancelled", None, 0)


async def test_cancelling_a_running_async_handler_raises_cancelled_error_in_it_and_the_job_ends_cancelled(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    entered, saw = asyncio.Event(), []

    async def forever(payload: dict[str, Any]) -> str:
        entered.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            saw.append("CancelledError")
            raise
        return "not cancelled"

    recorder = Recorder()
    c = await make_client(make_settings(redis_url=redis_url, concurrency=1),
                          {"forever": inline_task("forever", forever), "record": recorder.task()})
    job_id = (await enqueue(c, type="forever"))["id"]
    await async_wait_for(entered.is_set, 10, "the handler to start")

    status, answer = await cancel(c, job_id, "delete")

    assert status == 200, answer
    assert answer["previous_status"] == "active"

    async def cancelled_counted() -> bool:
        m = await metrics(c)
        return m["jobs_cancelled"] == 1 and m["jobs_active"] == 0

    await async_wait_for(cancelled_counted, 5, "the running job to be stopped and counted as cancelled")
    assert saw == ["CancelledError"]
    job = await get_job(c, job_id)
    assert (job["status"], job["result"]) == ("cancelled", None)
    m = await metrics(c)
    assert (m["jobs_done"], m["jobs_failed"], m["jobs_retried"]) == (0, 0, 0)
    assert any(e["event"] == "cancelled" and e.get("job_id") == job_id for e in read_log(tmp_path / "logs.txt"))
    # Its slot is free again.
    follower = await enqueue(c, type="record", payload={"tag": "next"})
    await wait_status(c, follower["id"], "succeeded")


async def test_cancelling_a_running_thread_handler_sets_ctx_cancelled_and_discards_its_result(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    entered, returned = threading.Event(), threading.Event()
    seen: list[bool] = []

    def stubborn(payload: dict[str, Any], ctx: Any) -> str:
        entered.set()
        seen.append(ctx.cancelled.wait(10))
        returned.set()
        return "result that must be discarded"

    recorder = Recorder()
    c = await make_client(make_settings(redis_url=redis_url, concurrency=1),
                          {"stubborn": inline_task("stubborn", stubborn), "record": recorder.task()})
    job_id = (await enqueue(c, type="stubborn"))["id"]
    await async_wait_for(entered.is_set, 10, "the handler's thread to start")

    status, answer = await cancel(c, job_id)

    assert status == 200 and answer["previous_status"] == "active", answer
    await async_wait_for(returned.is_set, 5, "the handler to see ctx.cancelled and return")
    assert seen == [True], "ctx.cancelled was not set for the running thread handler"

    async def settled() -> bool:
        m = await metrics(c)
        return m["jobs_cancelled"] == 1 and m["jobs_active"] == 0

    await async_wait_for(settled, 5, "the cancelled job to be acknowledged")
    # A later job runs to completion: by then anything the thread returned has been dealt with.
    follower = await enqueue(c, type="record", payload={"tag": "next"})
    await wait_status(c, follower["id"], "succeeded")
    job = await get_job(c, job_id)
    assert (job["status"], job["result"]) == ("cancelled", None)
    assert (await metrics(c))["jobs_done"] == 1  # the follower only


async def test_cancelling_an_ended_job_is_409_and_an_unknown_id_is_404(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    recorder = Recorder()
    c = await make_client(make_settings(redis_url=redis_url), {"record": recorder.task()})
    done = (await enqueue(c, type="record"))["id"]
    await wait_status(c, done, "succeeded")
    for how in ("post", "delete"):
        status, answer = await cancel(c, done, how)
        assert status == 409, answer
        assert "succeeded" in answer["error"], answer
        assert (await get_job(c, done))["status"] == "succeeded"

    scheduled = (await enqueue(c, type="record", delay=60))["id"]
    assert (await cancel(c, scheduled))[0] == 200
    status, answer = await cancel(c, scheduled)
    assert status == 409 and "cancelled" in answer["error"], answer

    for unknown in ("0" * 32, "not-a-job-id"):
        for how in ("post", "delete"):
            status, answer = await cancel(c, unknown, how)
            assert status == 404, answer
            assert answer["error"].startswith("id:"), answer
    assert (await metrics(c))["jobs_cancelled"] == 1






def logged(service: Service, event: str) -> set[str]:
    return {e["job_id"] for e in read_log(service.log_path) if e["event"] == event and "job_id" in e}


# -- 6. dead-letter store ------------------------------------------------------------------------

# Whether the "fragile" and "brittle" task types fail: a test turns it off to re-drive them to success.
BROKEN = {"fragile": True, "brittle": True}


@pytest.fixture
def broken() -> Any:
    BROKEN.update(fragile=True, brittle=True)
    yield BROKEN
    BROKEN.update(fragile=True, brittle=True)


async def fragile(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    if BROKEN[ctx.type]:
        raise RuntimeError(f"{ctx.type} broke on {payload.get('n')}")
    return {"fixed": payload.get("n")}


DEAD_TASKS = {"fragile": inline_task("fragile", fragile), "brittle": inline_task("brittle", fragile)}


async def die(client: Any, task_type: str = "fragile", queue: str = "default", n: Any = None) -> str:
    """Enqueue a job that fails with no retries and wait until it is dead."""
    answer = await enqueue(client, type=task_type, queue=queue, retries=0, payload={"n": n})
    await wait_status(client, answer["id"], "dead")
    return str(answer["id"])


async def test_dead_jobs_are_listed_newest_first_with_their_error_and_filtered_by_type_and_queue(
    make_client: Any, make_settings: Any, redis_url: str, broken: Any
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, queues=["default", "other"]), DEAD_TASKS)
    j1 = await die(c, "fragile", "default", 1)
    j2 = await die(c, "brittle", "default", 2)
    j3 = await die(c, "fragile", "other", 3)
    j4 = await die(c, "brittle", "other", 4)
    not_dead = await enqueue(c, type="fragile", payload={}, retries=0, delay=60)

    page = await dead_list(c)

    assert [j["id"] for j in page["jobs"]] == [j4, j3, j2, j1]
    assert page["next_cursor"] is None
    by_id = {j["id"]: j for j in page["jobs"]}
    for job_id, task_type, queue, n in ((j1, "fragile", "default", 1), (j2, "brittle", "default", 2),
                                        (j3, "fragile", "other", 3), (j4, "brittle", "other", 4)):
        job = by_id[job_id]
        assert (job["type"], job["queue"], job["status"], job["attempts"]) == (task_type, queue, "dead", 1)
        assert f"RuntimeError: {task_type} broke on {n}" in job["error"], job
        assert job["died_at"] is not None and job["payload"] == {"n": n}
    died = [epoch(j["died_at"]) for j in page["jobs"]]
    assert died == sorted(died, reverse=True)
    assert not_dead["id"] not in by_id

    assert [j["id"] for j in (await dead_list(c, type="fragile"))["jobs"]] == [j3, j1]
    assert [j["id"] for j in (await dead_list(c, queue="other"))["jobs"]] == [j4, j3]
    assert [j["id"] for j in (await dead_list(c, queue="default", type="brittle"))["jobs"]] == [j2]
    assert (await dead_list(c, type="nothing-of-this-type")) == {"jobs": [], "next_cursor": None}
    assert (await dead_list(c, queue="never-used")) == {"jobs": [], "next_cursor": None}
    m = await metrics(c)
    assert (m["jobs_dead"], m["jobs_failed"]) == (4, 4)


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "abc"}, {"limit": "1001"}, {"cursor": "yesterday"},
                                   {"queue": "no{braces}"}])
async def test_dead_list_with_a_bad_query_parameter_is_400_naming_it(
    make_client: Any, make_settings: Any, redis_url: str, query: dict[str, str]
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, role="producer"), DEAD_TASKS)
    response = await c.get("/dead", params=query)
    answer = await response.json()
    assert response.status == 400, answer
    (name,) = query
    assert answer["error"].startswith(f"{name}:"), answer


async def test_paging_the_dead_list_with_limit_and_next_cursor_returns_every_dead_job_exactly_once(
    make_client: Any, make_settings: Any, redis_url: str, broken: Any
) -> None:
    # Several slots, so jobs die close together (often recorded in one batch, at one instant).
    c = await make_client(make_settings(redis_url=redis_url, concurrency=8), DEAD_TASKS)
    status, answers = await post(c, "/enqueue", [{"type": "fragile", "retries": 0, "payload": {"n": n}}
                                                 for n in range(15)])
    assert status == 202
    expected = {a["id"] for a in answers}

    async def all_dead() -> bool:
        return (await metrics(c))["jobs_dead"] == 15

    await async_wait_for(all_dead, 10, "15 dead jobs")
    seen: list[str] = []
    died: list[float] = []
    cursor = None
    for _ in range(20):
        page = await dead_list(c, limit=2, **({"cursor": cursor} if cursor else {}))
        assert len(page["jobs"]) <= 2
        seen += [j["id"] for j in page["jobs"]]
        died += [epoch(j["died_at"]) for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), "a job was listed twice"
    assert set(seen) == expected, f"{len(expected - set(seen))} dead jobs were never listed"
    assert died == sorted(died, reverse=True)


async def test_redriving_one_dead_job_runs_it_again_to_success(
    make_client: Any, make_settings: Any, redis_url: str, broken: Any
) -> None:
    c = await make_client(make_settings(redis_url=redis_url), DEAD_TASKS)
    job_id = await die(c, "fragile", n=7)
    other = await die(c, "fragile", n=8)
    broken["fragile"] = False  # the cause is fixed

    status, answer = await post(c, f"/dead/{job_id}/retry")

    assert status == 202, answer
    assert answer == {"id": job_id, "status": "queued", "queue": "default"}
    job = await wait_status(c, job_id, "succeeded")
    assert (job["result"], job["error"], job["attempts"]) == ({"fixed": 7}, None, 1)
    assert [j["id"] for j in (await dead_list(c))["jobs"]] == [other]
    m = await metrics(c)
    assert (m["jobs_dead"], m["jobs_done"]) == (1, 1)
    # It is no longer dead, so it cannot be re-driven again; nor can an unknown id.
    for missing in (job_id, "0" * 32, "nope"):
        status, answer = await post(c, f"/dead/{missing}/retry")
        assert status == 404 and answer["error"].startswith("id:"), answer
    assert (await get_job(c, other))["status"] == "dead"


async def test_bulk_redrive_requeues_every_matching_dead_job_and_leaves_the_others(
    make_client: Any, make_settings: Any, redis_url: str, broken: Any
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, queues=["default", "other"]), DEAD_TASKS)
    fragile_ids = [await die(c, "fragile", q, n) for n, q in enumerate(["default", "other", "default"])]
    brittle_ids = [await die(c, "brittle", q, n) for n, q in enumerate(["default", "other"], start=10)]
    broken.update(fragile=False, brittle=False)

    status, answer = await post(c, "/dead/retry?type=fragile")

    assert status == 202, answer
    assert (answer["redriven"], sorted(answer["ids"])) == (3, sorted(fragile_ids))
    for job_id in fragile_ids:
        await wait_status(c, job_id, "succeeded")
    assert sorted(j["id"] for j in (await dead_list(c))["jobs"]) == sorted(brittle_ids)

    status, answer = await post(c, "/dead/retry?queue=other")
    assert status == 202 and answer["ids"] == [brittle_ids[1]], answer
    await wait_status(c, brittle_ids[1], "succeeded")
    assert (await get_job(c, brittle_ids[0]))["status"] == "dead"

    status, answer = await post(c, "/dead/retry")
    assert status == 202 and answer["ids"] == [brittle_ids[0]], answer
    await wait_status(c, brittle_ids[0], "succeeded")
    assert (await dead_list(c))["jobs"] == []
    status, answer = await post(c, "/dead/retry")
    assert (status, answer["redriven"]) == (202, 0)
    m = await metrics(c)
    assert (m["jobs_dead"], m["jobs_done"], m["jobs_failed"]) == (0, 5, 5)


async def test_deleting_a_dead_job_drops_it_and_deleting_it_again_is_404(
    make_client: Any, make_settings: Any, redis_url: str, broken: Any
) -> None:
    c = await make_client(make_settings(redis_url=redis_url), DEAD_TASKS)
    keep, drop = await die(c, n=1), await die(c, n=2)

    response = await c.delete(f"/dead/{drop}")

    assert response.status == 200
    assert await response.json() == {"id": drop, "deleted": True}
    assert [j["id"] for j in (await dead_list(c))["jobs"]] == [keep]
    assert (await c.get(f"/jobs/{drop}")).status == 404
    assert (await metrics(c))["jobs_dead"] == 1
    for missing in (drop, "0" * 32, "nope"):
        response = await c.delete(f"/dead/{missing}")
        assert response.status == 404
        assert (await response.json())["error"].startswith("id:")
    assert (await c.post(f"/dead/{drop}/retry")).status == 404


async def test_deleting_a_job_that_is_not_dead_through_dead_is_404_and_leaves_the_job_alone(
    make_client: Any, make_settings: Any, redis_url: str, broken: Any
) -> None:
    broken["fragile"] = False
    c = await make_client(make_settings(redis_url=redis_url), DEAD_TASKS)
    finished = (await enqueue(c, type="fragile", payload={"n": 1}))["id"]
    await wait_status(c, finished, "succeeded")
    waiting = (await enqueue(c, type="fragile", payload={"n": 2}, delay=60))["id"]

    for job_id, status in ((finished, "succeeded"), (waiting, "scheduled")):
        response = await c.delete(f"/dead/{job_id}")
        assert response.status == 404, await response.text()
        assert (await get_job(c, job_id))["status"] == status, "DELETE /dead/{id} destroyed a job that was not dead"


async def test_dead_max_keeps_only_the_newest_dead_jobs(
    make_client: Any, make_settings: Any, redis_url: str, broken: Any
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, dead_max=3), DEAD_TASKS)
    ids = [await die(c, n=n) for n in range(5)]

    assert [j["id"] for j in (await dead_list(c))["jobs"]] == ids[:1:-1]
    for dropped in ids[:2]:
        assert (await c.get(f"/jobs/{dropped}")).status == 404
    m = await metrics(c)
    assert (m["jobs_dead"], m["jobs_failed"]) == (3, 5)


async def test_dead_job_expires_after_dead_ttl_and_is_then_neither_listed_nor_counted(
    make_client: Any, make_settings: Any, redis_url: str, broken: Any
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, dead_ttl=0.5), DEAD_TASKS)
    job_id = await die(c)
    assert (await metrics(c))["jobs_dead"] == 1

    async def expired() -> bool:
        return (await c.get(f"/jobs/{job_id}")).status == 404

    await async_wait_for(expired, 5, "the dead job to expire")
    assert (await dead_list(c))["jobs"] == []
    assert (await metrics(c))["jobs_dead"] == 0


# -- 7. retention and backpressure ---------------------------------------------------------------


async def test_enqueue_beyond_max_length_is_503_with_retry_after_and_enqueues_nothing(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    settings = make_settings(redis_url=redis_url, role="producer", max_length={"default": 5})
    c = await make_client(settings, {"record": Recorder().task()})
    for n in range(4):
        await enqueue(c, type="record", payload={"n": n})
    await enqueue(c, type="record", payload={"n": 4}, delay=60, key="fifth")  # scheduled jobs count too

    response = await c.post("/enqueue", json={"type": "record", "payload": {"n": 5}})

    assert response.status == 503
    assert int(response.headers["Retry-After"]) > 0
    answer = await response.json()
    assert "default" in answer["error"] and "5" in answer["error"], answer
    m = await metrics(c)
    assert (m["jobs_enqueued"], m["total_jobs_in_queue"], m["jobs_scheduled"]) == (5, 4, 1)
    # A repeat of an existing job creates nothing, so it is still answered; another queue has room.
    status, answer = await post(c, "/enqueue", {"type": "record", "payload": {"n": 4}, "key": "fifth"})
    assert (status, answer.get("duplicate")) == (200, True), answer
    assert (await enqueue(c, type="record", queue="other"))["queue"] == "other"


async def test_array_that_would_cross_max_length_is_refused_whole_with_503(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    settings = make_settings(redis_url=redis_url, role="producer", max_length={"default": 5})
    c = await make_client(settings, {"record": Recorder().task()})
    job = {"type": "record", "payload": {}}
    assert (await post(c, "/enqueue", [job] * 3))[0] == 202

    for refused in ([job] * 3, [{**job, "queue": "other"}, job, job, job]):
        response = await c.post("/enqueue", json=refused)
        assert response.status == 503, await response.text()
        assert "Retry-After" in response.headers
        m = await metrics(c)
        assert (m["jobs_enqueued"], m["total_jobs_in_queue"]) == (3, 3), "a refused array enqueued some jobs"

    assert (await post(c, "/enqueue", [job] * 2))[0] == 202
    assert (await metrics(c))["total_jobs_in_queue"] == 5


async def test_array_spanning_two_queues_is_accepted_and_each_job_lands_in_its_queue(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, role="producer"), {"record": Recorder().task()})
    jobs = [{"type": "record", "payload": {"n": n}, "queue": q} for n, q in enumerate(["default", "other", "default"])]

    status, answer = await post(c, "/enqueue", jobs)

    assert status == 202, answer
    assert [a["queue"] for a in answer] == ["default", "other", "default"]
    for a, job in zip(answer, jobs):
        record = await get_job(c, a["id"])
        assert (record["queue"], record["payload"], record["status"]) == (job["queue"], job["payload"], "queued")
    m = await metrics(c)
    assert (m["queues"]["default"]["waiting"], m["queues"]["other"]["waiting"]) == (2, 1)


async def test_max_length_counts_running_jobs_and_frees_room_as_jobs_finish(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    gate, recorder = Gate(), Recorder()
    settings = make_settings(redis_url=redis_url, concurrency=1, max_length={"default": 2})
    c = await make_client(settings, {"gate": gate.task(), "record": recorder.task()})
    await hold_the_only_slot(c, gate)
    waiting = await enqueue(c, type="record")
    status, _ = await post(c, "/enqueue", {"type": "record", "payload": {}})
    assert status == 503  # one running and one waiting: the queue holds two

    gate.release.set()
    await wait_status(c, waiting["id"], "succeeded")
    assert (await post(c, "/enqueue", [{"type": "record", "payload": {}}] * 2))[0] == 202


@pytest.mark.parametrize("ending", ["succeeded", "cancelled"])
async def test_ended_job_record_is_404_once_result_ttl_has_passed(
    make_client: Any, make_settings: Any, redis_url: str, ending: str
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, result_ttl=1), {"record": Recorder().task()})
    if ending == "succeeded":
        job_id = (await enqueue(c, type="record"))["id"]
        job = await wait_status(c, job_id, "succeeded")
    else:
        job_id = (await enqueue(c, type="record", delay=60))["id"]
        assert (await cancel(c, job_id))[0] == 200
        job = await get_job(c, job_id)
    ended = epoch(job["finished_at"])

    async def expired() -> bool:
        return (await c.get(f"/jobs/{job_id}")).status == 404

    await async_wait_for(expired, 5, "the record to expire")
    assert time.time() >= ended + 1 - 0.01, "the record expired before its result_ttl"
    response = await c.get(f"/jobs/{job_id}")
    assert (await response.json())["error"].startswith("id:")
