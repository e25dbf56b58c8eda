"""The store's verbs (workqueue.store.Queue and its Lua scripts) on a real redis-server.

Every test talks to a `Queue` with its own connections to a clean database, and checks the keys it
leaves behind with a redis.asyncio client of its own; one test runs the scripts on the embedded store.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.conftest import async_wait_for
from tests.support import idempotency_key, job_key, key, keys_matching, streams
from workqueue.errors import QueueFull, ValidationError
from workqueue.job import Job, JobSpec, Outcome, new_ids
from workqueue.store import Queue, Retention, connect
from workqueue.store.connection import embedded
from workqueue.store.keys import GROUP, LEVELS, QUEUES_KEY, WORKERS_KEY

Q = "default"
RETENTION = Retention(result_ttl=60.0, dead_ttl=600.0, dead_max=1000, key_ttl=120.0)


def spec(n: int = 0, queue: str = Q, *, task_type: str = "t", priority: int = 0, run_at: float | None = None,
         key: str | None = None, key_ttl: float | None = None, retries: int = 3,
         payload: dict[str, Any] | None = None) -> JobSpec:
    return JobSpec(type=task_type, payload={"n": n} if payload is None else payload, retries=retries, queue=queue,
                   timeout=30.0, priority=priority, run_at=run_at, key=key, key_ttl=key_ttl)


# Every test here runs on one server, on the Redis Cluster and on the Sentinel group.
pytestmark = pytest.mark.topologies


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A client of the test's own to look at what the store left behind (a cluster client on the
    cluster, the Sentinels' master on the Sentinel group)."""
    connections = connect(redis_url, 5.0)
    yield connections.main
    await connections.close()


@pytest.fixture
async def make_queue(redis_url: str) -> AsyncIterator[Callable[..., Queue]]:
    made: list[Queue] = []

    def make(**retention: Any) -> Queue:
        values = {"result_ttl": RETENTION.result_ttl, "dead_ttl": RETENTION.dead_ttl,
                  "dead_max": RETENTION.dead_max, "key_ttl": RETENTION.key_ttl}
        values.update(retention)
        made.append(Queue(connect(redis_url, 5.0), Retention(**values)))
        return made[-1]

    yield make
    for queue in made:
        await queue.close()


@pytest.fixture
def queue(make_queue: Callable[..., Queue]) -> Queue:
    return make_queue()


# -- helpers ----------------------------------------------------------------------------------


def stream(level: int, queue: str = Q) -> str:
    return key(queue, f"stream:{level}")


async def record(client: aioredis.Redis, job_id: str, queue: str = Q) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await client.hgetall(job_key(queue, job_id))).items()}


async def status(client: aioredis.Redis, job_id: str, queue: str = Q) -> str | None:
    value = await client.hget(job_key(queue, job_id), "status")
    return value.decode() if value is not None else None


async def stream_jobs(client: aioredis.Redis, level: int, queue: str = Q) -> list[str]:
    """The job ids on one level stream, oldest entry first."""
    return [fields[b"id"].decode() for _, fields in await client.xrange(stream(level, queue))]


async def lengths(client: aioredis.Redis, queue: str = Q) -> list[int]:
    return [await client.xlen(s) for s in streams(queue)]


async def pending(client: aioredis.Redis, queue: str = Q) -> int:
    total = 0
    for s in streams(queue):
        if await client.exists(s):
            total += int((await client.xpending(s, GROUP))["pending"])
    return total


def counters(stats: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """stats() without the one value that changes by itself (the age of the oldest waiting job)."""
    return {q: {k: v for k, v in row.items() if k != "oldest_waiting_age_seconds"} for q, row in stats.items()}


async def job_hashes(client: aioredis.Redis, queue: str = Q) -> list[str]:
    return sorted(k.decode() for k in await keys_matching(client, job_key(queue, "*")))


async def enqueue_ids(queue: Queue, *specs: JobSpec, max_lengths: dict[str, int] | None = None) -> list[str]:
    return [e.id for e in await queue.enqueue(list(specs), max_lengths or {})]


async def fetch_all(queue: Queue, consumer: str = "a", count: int = 100, name: str = Q) -> list[Job]:
    jobs, _, _ = await queue.fetch(name, consumer, count)
    return jobs


async def dead_job(queue: Queue, n: int = 0, task_type: str = "t", name: str = Q) -> str:
    """Enqueue one job, fetch it and let it die: its own finish call, so its own time of death."""
    (job_id,) = await enqueue_ids(queue, spec(n, name, task_type=task_type, priority=9))
    jobs = await fetch_all(queue, name=name)
    (job,) = [j for j in jobs if j.id == job_id]
    assert await queue.finish([Outcome(job, "dead", f"E: {n}")]) == [1]
    return job_id


# -- enqueue ----------------------------------------------------------------------------------


async def test_enqueue_writes_one_job_hash_and_one_entry_on_the_priority_level_stream(
    queue: Queue, client: aioredis.Redis
) -> None:
    before = time.time()
    answers = await queue.enqueue([spec(0, priority=0), spec(1, priority=4), spec(2, priority=4)], {})

    ids = [a.id for a in answers]
    assert len(set(ids)) == 3
    assert [(a.status, a.created) for a in answers] == [("queued", True)] * 3
    assert await lengths(client) == [1, 0, 0, 0, 2, 0, 0, 0, 0, 0]
    assert await stream_jobs(client, 0) == ids[:1]
    assert await stream_jobs(client, 4) == ids[1:]
    assert await job_hashes(client) == sorted(job_key(Q, i) for i in ids)
    entries = {level: [e for e, _ in await client.xrange(stream(level))] for level in (0, 4)}
    for n, (job_id, level, entry) in enumerate(zip(ids, (0, 4, 4), [*entries[0], *entries[4]])):
        r = await record(client, job_id)
        assert r["id"] == job_id
        assert r["type"] == "t"
        assert r["queue"] == Q
        assert r["payload"] == f'{{"n":{n}}}'
        assert r["retries"] == "3"
        assert float(r["timeout"]) == 30.0
        assert r["status"] == "queued"
        assert r["attempts"] == "0"
        assert r["priority"] == str(level)
        assert r["level"] == str(level)
        assert r["entry"] == entry.decode()
        assert before - 5 < float(r["enqueued_at"]) < time.time() + 5
        assert "run_at" not in r and "key" not in r
        assert await client.pttl(job_key(Q, job_id)) == -1  # waiting jobs never expire
    assert await pending(client) == 0
    assert await client.smembers(QUEUES_KEY) == {Q.encode()}
    assert await queue.queues() == [Q]
    assert (await queue.stats())[Q]["enqueued"] == 3


async def test_enqueue_with_a_future_run_at_goes_to_the_scheduled_set(queue: Queue, client: aioredis.Redis) -> None:
    run_at = time.time() + 3600
    (answer,) = await queue.enqueue([spec(priority=3, run_at=run_at)], {})

    assert (answer.status, answer.created) == ("scheduled", True)
    assert await client.zscore(key(Q, "scheduled"), answer.id) == math.ceil(run_at * 1000)  # rounded up: never early
    assert await lengths(client) == [0] * LEVELS
    r = await record(client, answer.id)
    assert r["status"] == "scheduled"
    assert r["attempts"] == "0"
    assert float(r["run_at"]) == pytest.approx(run_at, abs=0.002)
    assert "entry" not in r
    stats = (await queue.stats())[Q]
    assert (stats["scheduled"], stats["waiting"], stats["enqueued"]) == (1, 0, 1)


async def test_enqueue_with_a_run_at_in_the_past_is_queued_at_once(queue: Queue, client: aioredis.Redis) -> None:
    (answer,) = await queue.enqueue([spec(priority=2, run_at=time.time() - 60)], {})

    assert answer.status == "queued"
    assert await stream_jobs(client, 2) == [answer.id]
    assert await client.zcard(key(Q, "scheduled")) == 0


# -- fetch and wait ---------------------------------------------------------------------------


async def test_fetch_delivers_the_highest_level_first_and_respects_count(queue: Queue, client: aioredis.Redis) -> None:
    low, mid1, top, mid2 = await enqueue_ids(queue, spec(0, priority=0), spec(1, priority=5), spec(2, priority=9),
                                             spec(3, priority=5))

    first, cursors, _ = await queue.fetch(Q, "a", 2)

    assert [j.id for j in first] == [top, mid1]
    assert cursors == []  # cursors only come with an empty fetch
    assert [(j.level, j.priority) for j in first] == [(9, 9), (5, 5)]
    second, _, _ = await queue.fetch(Q, "b", 10)
    assert [j.id for j in second] == [mid2, low]
    assert [j.level for j in second] == [5, 0]
    assert await pending(client) == 4
    jobs, cursors, _ = await queue.fetch(Q, "c", 10)
    assert (jobs, len(cursors)) == ([], LEVELS)


async def test_fetch_marks_jobs_active_with_attempt_1(queue: Queue, client: aioredis.Redis) -> None:
    (job_id,) = await enqueue_ids(queue, spec(7, priority=3))
    enqueued = await record(client, job_id)

    (job,) = await fetch_all(queue, "worker-1")

    assert job.id == job_id
    assert (job.type, job.queue, job.payload, job.retries, job.timeout) == ("t", Q, {"n": 7}, 3, 30.0)
    assert job.attempts == 1
    assert (job.level, job.priority) == (3, 3)
    assert job.due_at == pytest.approx(float(enqueued["enqueued_at"]), abs=0.001)  # no run_at: due when enqueued
    assert job.delivery == enqueued["entry"]  # the entry the job was published as
    r = await record(client, job_id)
    assert r["status"] == "active"
    assert r["attempts"] == "1"
    assert r["worker"] == "worker-1"
    assert r["entry"] == job.delivery
    assert float(r["started_at"]) >= float(r["enqueued_at"])  # both from the server's clock
    assert await pending(client) == 1
    assert (await queue.stats())[Q]["active"] == 1
    assert await fetch_all(queue, "worker-2") == []  # each entry is delivered once


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_a_trace_context_is_kept_with_its_job_and_returned_by_every_fetch(
    queue: Queue, client: aioredis.Redis
) -> None:
    traced = replace(spec(1), trace=f"{TRACEPARENT} vendor=x")
    traced_id, plain_id = await enqueue_ids(queue, traced, spec(2))
    assert (await record(client, traced_id))["trace"] == f"{TRACEPARENT} vendor=x"
    assert "trace" not in await record(client, plain_id)  # only when there is one

    jobs = {j.id: j for j in await fetch_all(queue)}
    assert (jobs[traced_id].trace, jobs[plain_id].trace) == (f"{TRACEPARENT} vendor=x", None)
    assert jobs[traced_id].payload == {"n": 1} and jobs[plain_id].priority == 0  # the other values in place
    # A retry is fetched with the same context: its attempt belongs to the same trace.
    await queue.finish([Outcome(jobs[traced_id], "retrying", "E", retry_at=time.time() - 1)])
    await queue.promote(Q)
    (again,) = await fetch_all(queue)
    assert (again.id, again.attempts, again.trace) == (traced_id, 2, f"{TRACEPARENT} vendor=x")


async def test_fetch_of_an_empty_queue_returns_no_jobs_and_a_cursor_per_level(queue: Queue) -> None:
    await queue.ensure_queue(Q)

    jobs, cursors, _ = await queue.fetch(Q, "a", 10)

    assert jobs == []
    assert cursors == ["0-0"] * LEVELS


async def test_fetch_lowest_first_reads_level_0_first(queue: Queue) -> None:
    low, top, mid = await enqueue_ids(queue, spec(0, priority=0), spec(1, priority=9), spec(2, priority=4))

    jobs, _, _ = await queue.fetch(Q, "a", 10, lowest_first=True)

    assert [j.id for j in jobs] == [low, mid, top]
    assert [j.level for j in jobs] == [0, 4, 9]


async def test_fetch_lowest_first_respects_count(queue: Queue) -> None:
    low, top = await enqueue_ids(queue, spec(0, priority=0), spec(1, priority=9))

    (job,), _, _ = await queue.fetch(Q, "a", 1, lowest_first=True)

    assert job.id == low
    (job,), _, _ = await queue.fetch(Q, "a", 1, lowest_first=True)
    assert job.id == top


async def test_fetch_drops_an_entry_whose_job_is_no_longer_queued(queue: Queue, client: aioredis.Redis) -> None:
    stale, gone, live = await enqueue_ids(queue, spec(0), spec(1), spec(2))
    # A cancel that raced the entry (or a record that expired): the entries are still on the stream.
    await client.hset(job_key(Q, stale), "status", "cancelled")
    await client.delete(job_key(Q, gone))
    assert await client.xlen(stream(0)) == 3

    jobs, _, _ = await queue.fetch(Q, "a", 10)

    assert [j.id for j in jobs] == [live]
    assert await stream_jobs(client, 0) == [live]  # the stale entries were acked and deleted
    assert await pending(client) == 1
    assert await status(client, stale) == "cancelled"
    assert await client.exists(job_key(Q, gone)) == 0  # not recreated by the fetch
    stats = (await queue.stats())[Q]
    assert (stats["waiting"], stats["active"]) == (0, 1)


async def test_fetch_skips_stale_entries_to_fill_count(queue: Queue, client: aioredis.Redis) -> None:
    ids = await enqueue_ids(queue, *(spec(i) for i in range(4)))
    for job_id in ids[:2]:
        await client.hset(job_key(Q, job_id), "status", "cancelled")

    jobs, _, _ = await queue.fetch(Q, "a", 2)

    assert [j.id for j in jobs] == ids[2:]


async def test_wait_returns_once_a_new_entry_appears(queue: Queue) -> None:
    await queue.ensure_queue(Q)
    jobs, cursors, _ = await queue.fetch(Q, "a", 10)
    assert jobs == []
    waiter = asyncio.create_task(queue.wait(Q, cursors, 10_000))
    await asyncio.sleep(0.1)
    assert not waiter.done()

    started = time.monotonic()
    await enqueue_ids(queue, spec(priority=6))
    await asyncio.wait_for(waiter, 3)

    assert time.monotonic() - started < 3
    (job,) = await fetch_all(queue)
    assert job.level == 6


async def test_wait_blocks_about_block_ms_when_nothing_comes(queue: Queue) -> None:
    # Jobs delivered but not acknowledged keep their entries on the streams; waiting must not wake for them.
    await enqueue_ids(queue, spec(0, priority=9), spec(1, priority=0))
    assert len(await fetch_all(queue)) == 2
    jobs, cursors, _ = await queue.fetch(Q, "a", 10)
    assert jobs == []

    started = time.monotonic()
    await queue.wait(Q, cursors, 300)

    assert 0.25 < time.monotonic() - started < 2


async def test_wait_with_cursors_of_a_lowest_first_fetch_blocks_too(queue: Queue) -> None:
    # The worker passes the cursors of every fetch to `wait`, including its lowest-first rounds.
    await enqueue_ids(queue, spec(0, priority=9))
    assert len(await fetch_all(queue)) == 1  # active: its entry stays on stream:9 until acknowledged
    jobs, cursors, _ = await queue.fetch(Q, "a", 10, lowest_first=True)
    assert jobs == []

    started = time.monotonic()
    await queue.wait(Q, cursors, 300)

    assert 0.25 < time.monotonic() - started < 2, "wait woke at once for an entry that was already delivered"


# -- finish -----------------------------------------------------------------------------------


async def test_finish_succeeded_records_the_result_and_sets_the_result_ttl(
    queue: Queue, client: aioredis.Redis
) -> None:
    (job_id,) = await enqueue_ids(queue, spec(priority=2))
    (job,) = await fetch_all(queue)

    assert await queue.finish([Outcome(job, "succeeded", '{"ok":true}')]) == [1]

    r = await record(client, job_id)
    assert r["status"] == "succeeded"
    assert r["result"] == '{"ok":true}'
    assert float(r["finished_at"]) >= float(r["started_at"])
    assert "entry" not in r and "error" not in r
    assert 0 < await client.pttl(job_key(Q, job_id)) <= RETENTION.result_ttl * 1000
    assert await lengths(client) == [0] * LEVELS  # acknowledged entries are deleted
    assert await pending(client) == 0
    stats = (await queue.stats())[Q]
    assert (stats["done"], stats["failed"], stats["retried"], stats["cancelled"]) == (1, 0, 0, 0)
    assert (stats["waiting"], stats["active"]) == (0, 0)


async def test_finish_succeeded_clears_the_error_of_an_earlier_attempt(queue: Queue, client: aioredis.Redis) -> None:
    (job_id,) = await enqueue_ids(queue, spec())
    (job,) = await fetch_all(queue)
    await queue.finish([Outcome(job, "retrying", "E: first", retry_at=time.time() - 1)])
    assert await queue.promote(Q) == (1, None)
    (job,) = await fetch_all(queue)
    assert job.attempts == 2

    assert await queue.finish([Outcome(job, "succeeded", "2")]) == [1]

    r = await record(client, job_id)
    assert (r["status"], r["result"]) == ("succeeded", "2")
    assert "error" not in r


async def test_finish_retry_schedules_the_job_without_a_ttl(queue: Queue, client: aioredis.Redis) -> None:
    (job_id,) = await enqueue_ids(queue, spec(priority=1))
    (job,) = await fetch_all(queue)
    retry_at = time.time() + 3600

    assert await queue.finish([Outcome(job, "retrying", "ValueError: x", retry_at=retry_at)]) == [1]

    r = await record(client, job_id)
    assert r["status"] == "retrying"
    assert r["error"] == "ValueError: x"
    assert float(r["run_at"]) == pytest.approx(retry_at, abs=0.002)
    assert "entry" not in r
    assert await client.zscore(key(Q, "scheduled"), job_id) == int(retry_at * 1000)
    assert await client.pttl(job_key(Q, job_id)) == -1  # a job still to be run does not expire
    assert await lengths(client) == [0] * LEVELS
    stats = (await queue.stats())[Q]
    assert (stats["retried"], stats["done"], stats["failed"]) == (1, 0, 0)
    assert (stats["scheduled"], stats["waiting"], stats["active"]) == (1, 0, 0)


async def test_finish_dead_adds_to_the_dead_set_with_the_dead_ttl(queue: Queue, client: aioredis.Redis) -> None:
    (job_id,) = await enqueue_ids(queue, spec())
    (job,) = await fetch_all(queue)

    assert await queue.finish([Outcome(job, "dead", "RuntimeError: gone")]) == [1]

    r = await record(client, job_id)
    assert r["status"] == "dead"
    assert r["error"] == "RuntimeError: gone"
    assert "entry" not in r
    died = await client.zscore(key(Q, "dead"), job_id)
    assert died == pytest.approx(float(r["finished_at"]))
    assert RETENTION.result_ttl * 1000 < await client.pttl(job_key(Q, job_id)) <= RETENTION.dead_ttl * 1000
    assert await lengths(client) == [0] * LEVELS
    stats = (await queue.stats())[Q]
    assert (stats["failed"], stats["dead"], stats["done"]) == (1, 1, 0)


async def test_finish_cancelled_outcome_ends_the_job(queue: Queue, client: aioredis.Redis) -> None:
    (job_id,) = await enqueue_ids(queue, spec())
    (job,) = await fetch_all(queue)

    assert await queue.finish([Outcome(job, "cancelled", "abandoned at shutdown")]) == [1]

    r = await record(client, job_id)
    assert (r["status"], r["error"]) == ("cancelled", "abandoned at shutdown")
    assert "entry" not in r and "finished_at" in r
    assert 0 < await client.pttl(job_key(Q, job_id)) <= RETENTION.result_ttl * 1000
    assert await lengths(client) == [0] * LEVELS
    stats = (await queue.stats())[Q]
    assert (stats["cancelled"], stats["done"], stats["failed"]) == (1, 0, 0)


async def test_finish_records_a_batch_of_outcomes_in_one_call(queue: Queue, client: aioredis.Redis) -> None:
    await enqueue_ids(queue, *(spec(i, priority=i) for i in range(4)))
    jobs = await fetch_all(queue)

    flags = await queue.finish([
        Outcome(jobs[0], "succeeded", "1"),
        Outcome(jobs[1], "retrying", "E: x", retry_at=time.time() + 60),
        Outcome(jobs[2], "dead", "E: y"),
        Outcome(jobs[3], "cancelled", "E: z"),
    ])

    assert flags == [1, 1, 1, 1]
    assert [await status(client, j.id) for j in jobs] == ["succeeded", "retrying", "dead", "cancelled"]
    stats = (await queue.stats())[Q]
    assert (stats["done"], stats["retried"], stats["failed"], stats["cancelled"]) == (1, 1, 1, 1)
    assert (stats["waiting"], stats["active"], stats["scheduled"], stats["dead"]) == (0, 0, 1, 1)
    assert await lengths(client) == [0] * LEVELS


async def test_finish_refuses_a_stale_outcome_after_release_requeued_the_job(
    queue: Queue, client: aioredis.Redis
) -> None:
    (job_id,) = await enqueue_ids(queue, spec(priority=1))
    (old,) = await fetch_all(queue, "a")
    assert await queue.recover(Q, "a", release=True) == (1, [])
    before = await queue.stats()

    assert await queue.finish([Outcome(old, "succeeded", "1")]) == [0]

    r = await record(client, job_id)
    assert r["status"] == "queued"
    assert "result" not in r
    assert await client.pttl(job_key(Q, job_id)) == -1
    assert counters(await queue.stats()) == counters(before)
    # Still there to be run, from the top level: a new fetch delivers it as attempt 2.
    (again,) = await fetch_all(queue, "b")
    # A handed-back attempt does not count.
    assert (again.id, again.attempts, again.level, again.priority) == (job_id, 1, 9, 1)
    assert (again.level, again.delivery) != (old.level, old.delivery)
    assert await queue.finish([Outcome(old, "dead", "E: stale")]) == [0]  # nor when another worker holds it
    assert await status(client, job_id) == "active"
    assert await queue.finish([Outcome(again, "succeeded", "2")]) == [1]
    assert await status(client, job_id) == "succeeded"


async def test_finish_of_a_job_cancelled_while_active_discards_the_result(queue: Queue, client: aioredis.Redis) -> None:
    (job_id,) = await enqueue_ids(queue, spec())
    (job,) = await fetch_all(queue)
    assert await queue.cancel(job_id) == ("active", "cancelled")

    assert await queue.finish([Outcome(job, "succeeded", '"late"')]) == [2]

    r = await record(client, job_id)
    assert r["status"] == "cancelled"
    assert "result" not in r and "entry" not in r
    assert 0 < await client.pttl(job_key(Q, job_id)) <= RETENTION.result_ttl * 1000
    assert await lengths(client) == [0] * LEVELS
    assert await pending(client) == 0
    stats = (await queue.stats())[Q]
    assert (stats["cancelled"], stats["done"], stats["failed"]) == (1, 0, 0)
    assert (stats["waiting"], stats["active"]) == (0, 0)


async def test_finish_after_a_cancelled_active_job_expired_still_removes_its_entry(
    make_queue: Callable[..., Queue], client: aioredis.Redis
) -> None:
    queue = make_queue(result_ttl=0.1)
    (job_id,) = await enqueue_ids(queue, spec())
    (job,) = await fetch_all(queue)
    assert await queue.cancel(job_id) == ("active", "cancelled")

    async def expired() -> bool:
        return await client.exists(job_key(Q, job_id)) == 0

    await async_wait_for(expired, 5, "the cancelled job's record to expire")

    await queue.finish([Outcome(job, "succeeded", "1")])

    assert await lengths(client) == [0] * LEVELS, "the acknowledged entry stays on the stream for ever"
    stats = (await queue.stats())[Q]
    assert (stats["waiting"], stats["active"]) == (0, 0)


async def test_dead_max_trims_the_oldest_dead_jobs_and_deletes_their_records(
    make_queue: Callable[..., Queue], client: aioredis.Redis
) -> None:
    queue = make_queue(dead_max=2)
    first = await dead_job(queue, 0)
    second = await dead_job(queue, 1)
    assert await client.zcard(key(Q, "dead")) == 2

    third = await dead_job(queue, 2)

    assert [m.decode() for m in await client.zrange(key(Q, "dead"), 0, -1)] == [second, third]
    assert await client.exists(job_key(Q, first)) == 0
    assert await status(client, second) == "dead"
    assert await status(client, third) == "dead"
    stats = (await queue.stats())[Q]
    assert (stats["dead"], stats["failed"]) == (2, 3)


# -- recovery ---------------------------------------------------------------------------------


async def test_recover_reaps_only_once_the_heartbeat_is_gone_and_requeues_on_the_top_level(
    queue: Queue, client: aioredis.Redis
) -> None:
    ids = await enqueue_ids(queue, spec(0, priority=2), spec(1, priority=0))
    queue.renew_lease([Q], "a", 30, {})
    old = await fetch_all(queue, "a")
    assert await client.pttl(key(Q, "worker:a")) > 0

    assert await queue.recover(Q, "b") == (0, [])

    assert [await status(client, i) for i in ids] == ["active", "active"]
    assert await pending(client) == 2
    assert await queue.recover(Q, "a") == (0, [])  # never its own jobs

    await queue.forget_worker([Q], "a")
    assert await queue.recover(Q, "b") == (2, ["a"])

    assert [await status(client, i) for i in ids] == ["queued", "queued"]
    assert sorted(await stream_jobs(client, 9)) == sorted(ids)
    assert await lengths(client) == [0] * 9 + [2]
    assert await pending(client) == 0
    for job_id in ids:
        r = await record(client, job_id)
        assert r["level"] == "9"
        assert r["entry"] in {e.decode() for e, _ in await client.xrange(stream(9))}
    for level in range(LEVELS):  # the dead consumer is removed from every group
        assert [c["name"] for c in await client.xinfo_consumers(stream(level), GROUP)] == []
    stats = (await queue.stats())[Q]
    assert (stats["recovered"], stats["released"], stats["waiting"], stats["active"]) == (2, 0, 2, 0)
    again = await fetch_all(queue, "b")
    assert sorted((j.id, j.attempts, j.level, j.priority) for j in again) == sorted(
        [(ids[0], 2, 9, 2), (ids[1], 2, 9, 0)])
    assert await queue.finish([Outcome(old[0], "succeeded", "stale")]) == [0]
    assert await queue.finish([Outcome(j, "succeeded", "1") for j in again]) == [1, 1]


async def test_recover_reaps_once_the_lease_expires(queue: Queue, client: aioredis.Redis) -> None:
    (job_id,) = await enqueue_ids(queue, spec())
    queue.renew_lease([Q], "a", 0.5, {})
    await fetch_all(queue, "a")
    assert await queue.recover(Q, "b") == (0, [])

    async def reaped() -> bool:
        return await queue.recover(Q, "b") == (1, ["a"])

    await async_wait_for(reaped, 5, "the job to be recovered after the lease expired")
    assert await status(client, job_id) == "queued"


async def test_recover_release_hands_back_only_this_consumers_jobs(queue: Queue, client: aioredis.Redis) -> None:
    mine, theirs = await enqueue_ids(queue, spec(0, priority=5), spec(1, priority=3))
    queue.renew_lease([Q], "a", 30, {})
    queue.renew_lease([Q], "b", 30, {})
    (a_job,) = await fetch_all(queue, "a", 1)
    (b_job,) = await fetch_all(queue, "b", 1)
    assert (a_job.id, b_job.id) == (mine, theirs)

    assert await queue.recover(Q, "a", release=True) == (1, [])

    assert await status(client, mine) == "queued"
    assert await status(client, theirs) == "active"
    assert await stream_jobs(client, 9) == [mine]
    assert await stream_jobs(client, 3) == [theirs]  # still pending under b
    assert await pending(client) == 1
    stats = (await queue.stats())[Q]
    assert (stats["released"], stats["recovered"], stats["waiting"], stats["active"]) == (1, 0, 1, 1)


async def test_recover_skips_deliveries_whose_job_already_finished(queue: Queue, client: aioredis.Redis) -> None:
    done, running = await enqueue_ids(queue, spec(0, priority=9), spec(1, priority=9))
    jobs = await fetch_all(queue, "a")
    assert await queue.finish([Outcome(jobs[0], "succeeded", "1")]) == [1]

    assert await queue.recover(Q, "a", release=True) == (1, [])

    assert await status(client, done) == "succeeded"
    assert await status(client, running) == "queued"
    assert await stream_jobs(client, 9) == [running]


async def test_recover_drops_the_delivery_of_a_cancelled_job_and_counts_it(
    queue: Queue, client: aioredis.Redis
) -> None:
    (job_id,) = await enqueue_ids(queue, spec())
    await fetch_all(queue, "a")
    assert await queue.cancel(job_id) == ("active", "cancelled")

    assert await queue.recover(Q, "b") == (0, ["a"])

    assert await status(client, job_id) == "cancelled"
    assert await lengths(client) == [0] * LEVELS
    stats = (await queue.stats())[Q]
    assert (stats["cancelled"], stats["recovered"], stats["active"]) == (1, 0, 0)


# -- promote ----------------------------------------------------------------------------------


async def test_promote_moves_due_jobs_onto_their_own_priority_stream(queue: Queue, client: aioredis.Redis) -> None:
    later = time.time() + 3600
    soon_at = time.time() + 0.5
    soon, far = await enqueue_ids(queue, spec(0, priority=7, run_at=soon_at), spec(1, priority=2, run_at=later))
    retrying, other = await enqueue_ids(queue, spec(2, priority=4), spec(3, priority=1))
    (job,) = await fetch_all(queue, count=1)
    assert job.id == retrying
    await queue.finish([Outcome(job, "retrying", "E", retry_at=time.time() - 1)])

    moved, next_due = await queue.promote(Q)
    assert moved == 1  # only the retry is due yet
    assert next_due == pytest.approx(soon_at, abs=0.002)
    assert await stream_jobs(client, 4) == [retrying]
    assert await status(client, retrying) == "queued"
    r = await record(client, retrying)
    assert r["level"] == "4"
    assert r["entry"] == (await client.xrange(stream(4)))[0][0].decode()

    await asyncio.sleep(max(0.0, soon_at - time.time()) + 0.02)
    moved, next_due = await queue.promote(Q)

    assert moved == 1
    assert next_due == pytest.approx(later, abs=0.002)
    assert await stream_jobs(client, 7) == [soon]
    assert (await record(client, soon))["level"] == "7"
    assert await status(client, soon) == "queued"
    assert await status(client, far) == "scheduled"
    assert [m.decode() for m in await client.zrange(key(Q, "scheduled"), 0, -1)] == [far]
    jobs = await fetch_all(queue)
    assert [j.id for j in jobs] == [soon, retrying, other]
    assert jobs[0].due_at == pytest.approx(soon_at, abs=0.002)  # a delayed job is due at its run_at
    assert jobs[1].attempts == 2


async def test_promote_of_nothing_reports_no_next_time(queue: Queue) -> None:
    await queue.ensure_queue(Q)
    assert await queue.promote(Q) == (0, None)


async def test_promote_respects_its_limit(queue: Queue, client: aioredis.Redis) -> None:
    await queue.ensure_queue(Q)  # connected first: the jobs must still be in the future when written
    await enqueue_ids(queue, *(spec(i, run_at=time.time() + 0.05) for i in range(3)))
    await asyncio.sleep(0.1)

    moved, next_due = await queue.promote(Q, limit=2)

    assert moved == 2
    assert next_due is not None and next_due < time.time()
    assert await queue.promote(Q, limit=2) == (1, None)
    assert await client.xlen(stream(0)) == 3


# -- idempotency keys -------------------------------------------------------------------------


async def test_same_key_and_payload_returns_the_first_job(queue: Queue, client: aioredis.Redis) -> None:
    (first,) = await queue.enqueue([spec(1, key="order-1")], {})
    assert first.created

    (again,) = await queue.enqueue([spec(1, key="order-1")], {})

    assert (again.id, again.status, again.created) == (first.id, "queued", False)
    assert await job_hashes(client) == [job_key(Q, first.id)]
    assert await client.xlen(stream(0)) == 1
    assert (await queue.stats())[Q]["enqueued"] == 1
    stored = (await client.get(idempotency_key(Q, "order-1"))).decode()
    assert stored.split(" ")[0] == first.id
    assert (await record(client, first.id))["key"] == idempotency_key(Q, "order-1")
    # The answer reports what the job is now.
    await fetch_all(queue)
    (third,) = await queue.enqueue([spec(1, key="order-1")], {})
    assert (third.id, third.status, third.created) == (first.id, "active", False)


async def test_same_key_in_one_batch_creates_one_job(queue: Queue, client: aioredis.Redis) -> None:
    answers = await queue.enqueue([spec(1, key="k"), spec(2), spec(1, key="k")], {})

    assert [a.created for a in answers] == [True, True, False]
    assert answers[2].id == answers[0].id
    assert len(await job_hashes(client)) == 2
    assert (await queue.stats())[Q]["enqueued"] == 2


async def test_same_key_with_a_different_payload_is_a_409_and_writes_nothing(
    queue: Queue, client: aioredis.Redis
) -> None:
    (first,) = await queue.enqueue([spec(1, key="order-1")], {})
    before_keys = sorted(await keys_matching(client, "*"))
    before_stats = await queue.stats()

    with pytest.raises(ValidationError) as caught:
        await queue.enqueue([spec(5), spec(2, key="order-1")], {})
    assert caught.value.status == 409
    assert first.id in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        await queue.enqueue([spec(1, key="order-1", task_type="other")], {})
    assert caught.value.status == 409

    assert sorted(await keys_matching(client, "*")) == before_keys
    assert counters(await queue.stats()) == counters(before_stats)
    assert await client.xlen(stream(0)) == 1


async def test_concurrent_enqueues_with_one_key_create_exactly_one_job(queue: Queue, client: aioredis.Redis) -> None:
    answers = await asyncio.gather(*(queue.enqueue([spec(1, key="once")], {}) for _ in range(50)))

    flat = [a for (a,) in answers]
    assert sum(a.created for a in flat) == 1
    assert len({a.id for a in flat}) == 1
    assert await job_hashes(client) == [job_key(Q, flat[0].id)]
    assert await client.xlen(stream(0)) == 1
    assert (await queue.stats())[Q]["enqueued"] == 1


async def test_the_key_lives_as_long_as_the_job_then_gets_the_key_ttl(queue: Queue, client: aioredis.Redis) -> None:
    (job_id,) = await enqueue_ids(queue, spec(key="k"))
    idem = idempotency_key(Q, "k")
    assert await client.pttl(idem) == -1
    (job,) = await fetch_all(queue)
    assert await client.pttl(idem) == -1

    assert await queue.finish([Outcome(job, "retrying", "E", retry_at=time.time() - 1)]) == [1]
    assert await client.pttl(idem) == -1  # not ended yet
    await queue.promote(Q)
    (job,) = await fetch_all(queue)
    assert await queue.finish([Outcome(job, "succeeded", "1")]) == [1]

    assert RETENTION.result_ttl * 1000 < await client.pttl(idem) <= RETENTION.key_ttl * 1000
    assert job_id in (await client.get(idem)).decode()


async def test_a_job_key_ttl_overrides_the_default(queue: Queue, client: aioredis.Redis) -> None:
    (job_id,) = await enqueue_ids(queue, spec(key="k", key_ttl=5.0))
    assert (await record(client, job_id))["key_ttl"] == "5000"
    (job,) = await fetch_all(queue)

    assert await queue.finish([Outcome(job, "dead", "E")]) == [1]

    assert 0 < await client.pttl(idempotency_key(Q, "k")) <= 5000


async def test_cancel_and_redrive_move_the_key_ttl_with_the_job(queue: Queue, client: aioredis.Redis) -> None:
    (queued,) = await enqueue_ids(queue, spec(1, key="k1"))
    assert await queue.cancel(queued) == ("queued", "cancelled")
    assert 0 < await client.pttl(idempotency_key(Q, "k1")) <= RETENTION.key_ttl * 1000

    (job_id,) = await enqueue_ids(queue, spec(2, key="k2"))
    (job,) = await fetch_all(queue)
    await queue.finish([Outcome(job, "dead", "E")])
    assert await client.pttl(idempotency_key(Q, "k2")) > 0
    assert await queue.redrive(Q, [job_id]) == [job_id]
    assert await client.pttl(idempotency_key(Q, "k2")) == -1


# -- max_length -------------------------------------------------------------------------------


async def test_a_full_queue_raises_queue_full_and_writes_nothing(queue: Queue, client: aioredis.Redis) -> None:
    await enqueue_ids(queue, spec(0), spec(1, run_at=time.time() + 3600), max_lengths={Q: 3})
    before_keys = sorted(await keys_matching(client, "*"))

    with pytest.raises(QueueFull):
        await queue.enqueue([spec(2), spec(3)], {Q: 3})  # 2 + 2 > 3: all or nothing
    assert sorted(await keys_matching(client, "*")) == before_keys
    assert (await queue.stats())[Q]["enqueued"] == 2

    (third,) = await queue.enqueue([spec(2)], {Q: 3})
    with pytest.raises(QueueFull):
        await queue.enqueue([spec(4, priority=9)], {Q: 3})
    assert sum(await lengths(client)) == 2
    assert len(await job_hashes(client)) == 3
    assert third.created
    assert len(await fetch_all(queue)) == 2  # delivered but unacknowledged jobs still count
    with pytest.raises(QueueFull):
        await queue.enqueue([spec(5)], {Q: 3})
    (again,) = await queue.enqueue([spec(2)], {Q: 0})  # 0: no limit
    assert again.created


async def test_a_full_queue_still_answers_an_existing_idempotency_key(queue: Queue) -> None:
    (first,) = await queue.enqueue([spec(1, key="k")], {Q: 1})

    (again,) = await queue.enqueue([spec(1, key="k")], {Q: 1})

    assert (again.id, again.created) == (first.id, False)


async def test_a_batch_over_two_queues_writes_nothing_when_the_second_is_full(
    queue: Queue, client: aioredis.Redis
) -> None:
    await enqueue_ids(queue, spec(0, "q2"), max_lengths={"q2": 1})

    with pytest.raises(QueueFull):
        await queue.enqueue([spec(1, "q1"), spec(2, "q2"), spec(3, "q1")], {"q1": 10, "q2": 1})

    assert await job_hashes(client, "q1") == []
    assert await lengths(client, "q1") == [0] * LEVELS
    assert (await queue.stats())["q1"]["enqueued"] == 0
    assert len(await job_hashes(client, "q2")) == 1

    (keyed,) = await enqueue_ids(queue, spec(1, "q3", key="k"))
    with pytest.raises(ValidationError) as caught:  # a conflicting key in the second queue, likewise
        await queue.enqueue([spec(1, "q1"), spec(9, "q3", key="k")], {})
    assert caught.value.status == 409
    assert await job_hashes(client, "q1") == []
    assert await job_hashes(client, "q3") == [job_key("q3", keyed)]

    answers = await queue.enqueue([spec(1, "q1"), spec(2, "q3"), spec(3, "q1")], {"q1": 10})
    assert [a.spec.queue for a in answers] == ["q1", "q3", "q1"]
    assert await stream_jobs(client, 0, "q1") == [answers[0].id, answers[2].id]
    assert await stream_jobs(client, 0, "q3") == [keyed, answers[1].id]


# -- cancel -----------------------------------------------------------------------------------


async def test_cancel_a_queued_job_deletes_its_entry(queue: Queue, client: aioredis.Redis) -> None:
    job_id, other = await enqueue_ids(queue, spec(0, priority=6), spec(1, priority=6))

    assert await queue.cancel(job_id) == ("queued", "cancelled")

    assert await stream_jobs(client, 6) == [other]
    r = await record(client, job_id)
    assert r["status"] == "cancelled"
    assert r["error"] == "cancelled on request"
    assert "entry" not in r and "finished_at" in r
    assert 0 < await client.pttl(job_key(Q, job_id)) <= RETENTION.result_ttl * 1000
    stats = (await queue.stats())[Q]
    assert (stats["cancelled"], stats["waiting"]) == (1, 1)
    assert await queue.cancel_counters([Q]) == [0]  # only running jobs bump it
    assert [j.id for j in await fetch_all(queue)] == [other]


async def test_cancel_a_scheduled_or_retrying_job_removes_it_from_the_scheduled_set(
    queue: Queue, client: aioredis.Redis
) -> None:
    (scheduled,) = await enqueue_ids(queue, spec(0, run_at=time.time() + 3600))
    (retrying,) = await enqueue_ids(queue, spec(1))
    (job,) = await fetch_all(queue)
    await queue.finish([Outcome(job, "retrying", "E", retry_at=time.time() + 3600)])

    assert await queue.cancel(scheduled) == ("scheduled", "cancelled")
    assert await queue.cancel(retrying) == ("retrying", "cancelled")

    assert await client.zcard(key(Q, "scheduled")) == 0
    assert [await status(client, i) for i in (scheduled, retrying)] == ["cancelled", "cancelled"]
    stats = (await queue.stats())[Q]
    assert (stats["cancelled"], stats["scheduled"]) == (2, 0)
    assert await queue.promote(Q) == (0, None)


async def test_cancel_an_active_job_marks_it_and_bumps_the_cancel_counter(queue: Queue, client: aioredis.Redis) -> None:
    (job_id,) = await enqueue_ids(queue, spec())
    (job,) = await fetch_all(queue)

    assert await queue.cancel(job_id) == ("active", "cancelled")

    r = await record(client, job_id)
    assert r["status"] == "cancelled"
    assert r["entry"] == job.delivery  # the holder still acknowledges this delivery
    assert await client.get(key(Q, "cancels")) == b"1"
    assert await queue.cancel_counters([Q]) == [1]
    stats = (await queue.stats())[Q]
    assert (stats["cancelled"], stats["active"]) == (0, 1)  # counted when the holder acknowledges
    assert await queue.statuses([job]) == ["cancelled"]


async def test_cancel_a_finished_job_changes_nothing(queue: Queue, client: aioredis.Redis) -> None:
    done, dead = await enqueue_ids(queue, spec(0), spec(1))
    jobs = await fetch_all(queue)
    await queue.finish([Outcome(jobs[0], "succeeded", "1"), Outcome(jobs[1], "dead", "E")])
    cancelled = await dead_job(queue, 2)
    await client.hset(job_key(Q, cancelled), "status", "cancelled")
    before = await queue.stats()

    assert await queue.cancel(done) == ("succeeded", "succeeded")
    assert await queue.cancel(dead) == ("dead", "dead")
    assert await queue.cancel(cancelled) == ("cancelled", "cancelled")

    assert await status(client, done) == "succeeded"
    assert await status(client, dead) == "dead"
    assert counters(await queue.stats()) == counters(before)
    assert await queue.cancel_counters([Q]) == [0]


async def test_cancel_an_unknown_job_returns_none(queue: Queue) -> None:
    await enqueue_ids(queue, spec())
    assert await queue.cancel(new_ids(1)[0]) is None


async def test_cancel_counters_are_per_queue(queue: Queue) -> None:
    a1, a2 = await enqueue_ids(queue, spec(0, "qa"), spec(1, "qa"))
    (b1,) = await enqueue_ids(queue, spec(0, "qb"))
    await fetch_all(queue, name="qa")
    await fetch_all(queue, name="qb")
    assert await queue.cancel_counters(["qa", "qb", "qc"]) == [0, 0, 0]

    for job_id in (a1, a2, b1):
        await queue.cancel(job_id)

    assert await queue.cancel_counters(["qa", "qb", "qc"]) == [2, 1, 0]
    assert await queue.cancel_counters(["qa"]) == [2]


# -- dead letters -----------------------------------------------------------------------------


async def test_redrive_sends_a_dead_job_back_with_fresh_attempts(queue: Queue, client: aioredis.Redis) -> None:
    (job_id,) = await enqueue_ids(queue, spec(priority=3))
    (job,) = await fetch_all(queue)
    await queue.finish([Outcome(job, "dead", "E")])
    assert await client.pttl(job_key(Q, job_id)) > 0

    assert await queue.redrive(Q, [job_id, new_ids(1)[0]]) == [job_id]

    r = await record(client, job_id)
    assert r["status"] == "queued"
    assert r["attempts"] == "0"
    assert r["level"] == "3"
    assert r["entry"] == (await client.xrange(stream(3)))[0][0].decode()
    assert "finished_at" not in r and "started_at" not in r and "redriven_at" in r
    assert await client.pttl(job_key(Q, job_id)) == -1
    assert await client.zcard(key(Q, "dead")) == 0
    stats = (await queue.stats())[Q]
    assert (stats["redriven"], stats["dead"], stats["waiting"]) == (1, 0, 1)
    assert await queue.redrive(Q, [job_id]) == []  # no longer dead
    assert await queue.redrive(Q, []) == []
    (again,) = await fetch_all(queue)
    assert (again.id, again.attempts, again.level) == (job_id, 1, 3)


async def test_drop_dead_deletes_the_job(queue: Queue, client: aioredis.Redis) -> None:
    job_id = await dead_job(queue)

    assert await queue.drop_dead(Q, job_id) is True

    assert await client.exists(job_key(Q, job_id)) == 0
    assert await client.zcard(key(Q, "dead")) == 0
    assert await queue.drop_dead(Q, job_id) is False
    assert (await queue.stats())[Q]["dead"] == 0


async def test_dead_lists_newest_first_filters_by_type_and_pages(queue: Queue) -> None:
    a1 = await dead_job(queue, 0, "a")
    b1 = await dead_job(queue, 1, "b")
    a2 = await dead_job(queue, 2, "a")
    other = await dead_job(queue, 3, "a", name="other")

    everything = await queue.dead(Q, None, 10, None)
    assert [r["id"] for r in everything] == [a2, b1, a1]
    assert everything[0]["error"] == "E: 2"
    assert everything[0]["status"] == "dead"
    died = [float(r["died_at"]) for r in everything]
    assert died == sorted(died, reverse=True)

    assert [r["id"] for r in await queue.dead(Q, "a", 10, None)] == [a2, a1]
    assert [r["id"] for r in await queue.dead(Q, "b", 10, None)] == [b1]
    assert await queue.dead(Q, "nope", 10, None) == []
    assert [r["id"] for r in await queue.dead(None, "a", 10, None)] == [other, a2, a1]

    page1 = await queue.dead(Q, None, 2, None)
    assert [r["id"] for r in page1] == [a2, b1]
    page2 = await queue.dead(Q, None, 2, float(page1[-1]["died_at"]))
    assert [r["id"] for r in page2] == [a1]
    assert await queue.dead(Q, None, 2, float(page2[-1]["died_at"])) == []
    page = await queue.dead(Q, "a", 1, None)
    assert [r["id"] for r in page] == [a2]
    assert [r["id"] for r in await queue.dead(Q, "a", 1, float(page[0]["died_at"]))] == [a1]


async def test_dead_pages_lose_no_job_when_a_batch_died_at_once(queue: Queue) -> None:
    # The worker records outcomes in batches: one finish call, one server time for all of them.
    ids = await enqueue_ids(queue, *(spec(i) for i in range(3)))
    jobs = await fetch_all(queue)
    assert await queue.finish([Outcome(j, "dead", "E") for j in jobs]) == [1, 1, 1]

    seen: list[str] = []
    before = None
    for _ in range(5):
        page = await queue.dead(Q, None, 2, before)
        if not page:
            break
        seen += [r["id"] for r in page]
        before = float(page[-1]["died_at"])

    assert sorted(seen) == sorted(ids), "paging with `before` skipped dead jobs that share a time of death"


async def test_recover_orphans_requeues_only_old_deliveries_the_worker_does_not_hold(
    queue: Queue, client: aioredis.Redis
) -> None:
    """After a failover lost a master's last writes, a job can be pending under a live worker that
    no longer holds it (it finished it, or never got it): the worker itself takes it back."""
    await enqueue_ids(queue, spec(0), spec(1), spec(2))
    held, *lost = await fetch_all(queue, "a")

    assert await queue.recover_orphans(Q, "a", [held], idle=60) == 0  # none pending that long yet
    await asyncio.sleep(0.05)
    assert await queue.recover_orphans(Q, "b", [], idle=0.01) == 0  # only a worker's own
    assert await queue.recover_orphans(Q, "a", [held], idle=0.01) == 2

    assert await status(client, held.id) == "active"
    assert [await status(client, j.id) for j in lost] == ["queued", "queued"]
    assert sorted(await stream_jobs(client, LEVELS - 1)) == sorted(j.id for j in lost)
    assert (await queue.stats())[Q]["recovered"] == 2
    # The orphans' old deliveries are fenced off; the held job finishes as usual.
    assert await queue.finish([Outcome(lost[0], "succeeded", "1"), Outcome(held, "succeeded", "1")]) == [0, 1]
    again = await fetch_all(queue, "b")
    assert sorted(j.id for j in again) == sorted(j.id for j in lost)


async def poison_jobs(queue: Queue, n: int, task_type: str = "t") -> list[str]:
    """n jobs with no retries whose worker dies on their one attempt: the next fetch buries them."""
    ids = await enqueue_ids(queue, *(spec(i, task_type=task_type, retries=0) for i in range(n)))
    await fetch_all(queue, "doomed")  # attempt 1 starts, and the worker dies (no heartbeat)
    assert await queue.recover(Q, "reaper") == (n, ["doomed"])
    return ids


async def test_poison_jobs_buried_at_fetch_page_and_count_like_other_dead_jobs(
    make_queue: Callable[..., Queue], client: aioredis.Redis
) -> None:
    queue = make_queue(dead_max=3)
    older = await dead_job(queue, 100)
    poisoned = await poison_jobs(queue, 3)

    got = await queue.fetch(Q, "survivor", 10)

    # Buried in one fetch, so under one server time: each still gets a score of its own ...
    assert (got.jobs, sorted(got.buried)) == ([], sorted(poisoned))
    scores = [score for _, score in await client.zrange(key(Q, "dead"), 0, -1, withscores=True)]
    assert len(set(scores)) == len(scores) == 3
    # ... the dead set is trimmed to dead_max, dropping the oldest death and its record ...
    assert await client.exists(job_key(Q, older)) == 0
    assert sorted(m.decode() for m in await client.zrange(key(Q, "dead"), 0, -1)) == sorted(poisoned)
    # ... they page without loss ...
    seen, before = [], None
    while page := await queue.dead(Q, None, 1, before):
        seen += [r["id"] for r in page]
        before = float(page[-1]["died_at"])
    assert sorted(seen) == sorted(poisoned)
    # ... and count as failed attempts and deaths of their type, as a death recorded by finish does.
    stats = (await queue.stats())[Q]
    assert (stats["dead"], stats["failed"]) == (3, 4)
    assert stats["types"]["t"] == {"failed": 4, "dead": 4, "recovered": 3}
    assert [(await record(client, j))["status"] for j in poisoned] == ["dead"] * 3


# -- stats, keys, embedded store --------------------------------------------------------------


async def test_stats_counts_waiting_active_scheduled_and_dead_per_queue(queue: Queue) -> None:
    await enqueue_ids(queue, *(spec(i, "q1", priority=i) for i in range(4)))
    await enqueue_ids(queue, *(spec(i, "q2") for i in range(3)), spec(9, "q2", run_at=time.time() + 3600))
    await fetch_all(queue, count=1, name="q1")  # q1: 3 waiting, 1 active
    jobs = await fetch_all(queue, count=3, name="q2")
    await queue.finish([Outcome(jobs[0], "retrying", "E", retry_at=time.time() + 3600),
                        Outcome(jobs[1], "dead", "E")])  # q2: 1 active, 2 scheduled, 1 dead

    stats = await queue.stats()

    assert set(stats) == {"q1", "q2"}
    pick = ("waiting", "active", "scheduled", "dead")
    assert {f: stats["q1"][f] for f in pick} == {"waiting": 3, "active": 1, "scheduled": 0, "dead": 0}
    assert {f: stats["q2"][f] for f in pick} == {"waiting": 0, "active": 1, "scheduled": 2, "dead": 1}
    assert (stats["q1"]["enqueued"], stats["q2"]["enqueued"]) == (4, 4)
    assert (stats["q2"]["retried"], stats["q2"]["failed"], stats["q2"]["done"]) == (1, 1, 0)
    assert {"enqueued", "done", "failed", "retried", "recovered", "released", "cancelled", "redriven"} <= set(
        stats["q1"])


async def test_finish_counts_outcomes_per_task_type_and_keeps_timings(queue: Queue) -> None:
    await enqueue_ids(queue, spec(0, task_type="a", priority=3), spec(1, task_type="a", priority=2),
                      spec(2, task_type="b", priority=1), spec(3, task_type="b"))
    jobs = await fetch_all(queue)
    assert [j.type for j in jobs] == ["a", "a", "b", "b"]

    await queue.finish([Outcome(jobs[0], "succeeded", "1"),
                        Outcome(jobs[1], "retrying", "E", retry_at=time.time() + 60),
                        Outcome(jobs[2], "dead", "E"), Outcome(jobs[3], "cancelled", "E")])

    types = (await queue.stats())[Q]["types"]
    assert types == {"a": {"succeeded": 1, "failed": 1, "retried": 1},
                     "b": {"failed": 1, "dead": 1, "cancelled": 1}}
    timings = await queue.timings(Q)
    assert sorted(t for t, _, _ in timings) == ["a", "a", "b"]  # a cancelled attempt is not timed
    assert all(wait >= 0 and run >= 0 for _, wait, run in timings)


async def test_stats_of_an_empty_store_is_empty(queue: Queue) -> None:
    assert await queue.stats() == {}


async def test_get_job_and_locate_find_the_queue(queue: Queue) -> None:
    (job_id,) = await enqueue_ids(queue, spec(queue="mail"))

    assert await queue.locate(job_id) == "mail"
    assert (await queue.get_job(job_id) or {})["status"] == "queued"
    assert await queue.locate(new_ids(1)[0]) is None
    assert await queue.get_job(new_ids(1)[0]) is None


async def test_all_keys_of_a_queue_share_its_cluster_hash_tag(queue: Queue, client: aioredis.Redis) -> None:
    queue.renew_lease(["mail"], "a", 30, {})
    await enqueue_ids(queue, spec(0, "mail", key="k1"), spec(1, "mail", priority=9),
                      spec(2, "mail", run_at=time.time() + 3600))
    jobs = await fetch_all(queue, name="mail")
    await queue.cancel(jobs[0].id)
    await queue.finish([Outcome(jobs[0], "succeeded", "1"), Outcome(jobs[1], "dead", "E")])
    await queue.set_last_tick("mail", "nightly", 1.0)
    assert await queue.last_tick("mail", "nightly") == 1.0

    names = {k.decode() for k in await keys_matching(client, "*")} - {QUEUES_KEY, WORKERS_KEY}
    assert {key("mail", n) for n in ("stats", "scheduled", "dead", "cancels", "worker:a", "schedule:nightly",
                                     "stream:0", "stream:9")} <= names
    assert idempotency_key("mail", "k1") in names
    assert all(n.startswith("wq:{mail}:") for n in names), names


async def test_the_same_scripts_work_on_the_embedded_fakeredis_store() -> None:

    connections = embedded()
    client = connections.main
    try:
        queue = Queue(connections, RETENTION)
        low, top, later, keyed = await enqueue_ids(queue, spec(0, priority=1), spec(1, priority=8),
                                                   spec(2, run_at=time.time() + 3600), spec(3, key="k"))
        assert (await queue.enqueue([spec(3, key="k")], {}))[0].id == keyed
        jobs, cursors, _ = await queue.fetch(Q, "a", 2)
        assert [(j.id, j.level, j.attempts) for j in jobs] == [(top, 8, 1), (low, 1, 1)]
        assert await queue.cancel(later) == ("scheduled", "cancelled")
        (last,), _, _ = await queue.fetch(Q, "b", 5, lowest_first=True)
        assert last.id == keyed
        empty, cursors, _ = await queue.fetch(Q, "b", 5)
        assert (empty, len(cursors)) == ([], LEVELS)
        assert await queue.recover(Q, "b", release=True) == (1, [])  # hands back `last`
        (again,), _, _ = await queue.fetch(Q, "c", 5)
        assert (again.id, again.level, again.attempts) == (keyed, 9, 1)  # a handed-back attempt does not count
        assert await queue.finish([Outcome(jobs[0], "succeeded", "1"), Outcome(jobs[1], "dead", "E"),
                                   Outcome(last, "succeeded", "stale"),
                                   Outcome(again, "retrying", "E", retry_at=time.time() - 1)]) == [1, 1, 0, 1]
        assert await queue.promote(Q) == (1, None)
        assert await status(client, top) == "succeeded"
        assert await status(client, low) == "dead"
        assert await status(client, keyed) == "queued"
        assert await queue.redrive(Q, [low]) == [low]
        (traced_id,) = await enqueue_ids(queue, replace(spec(4), trace=TRACEPARENT))
        traced = {j.id: j for j in await fetch_all(queue, "d")}
        assert set(traced) == {traced_id, keyed, low}
        assert traced[traced_id].trace == TRACEPARENT and traced[keyed].trace is None is traced[low].trace
        await queue.finish([Outcome(job, "succeeded", "1") for job in traced.values()])
        stats = (await queue.stats())[Q]
        assert (stats["waiting"], stats["active"], stats["scheduled"], stats["dead"]) == (0, 0, 0, 0)
        assert (stats["done"], stats["failed"], stats["retried"], stats["cancelled"], stats["released"],
                stats["redriven"], stats["enqueued"]) == (4, 1, 1, 1, 1, 1, 5)
    finally:
        await queue.close()
