"""The Redis data layer (workqueue.queue.Queue and its Lua scripts) on a real redis-server."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.conftest import async_wait_for
from workqueue.job import JobSpec
from workqueue.queue import GROUP, Outcome, Queue, job_key, key

RESULT_TTL = 60.0
DEAD_TTL = 600.0
Q = "default"


def spec(n: int = 0, queue: str = Q, retries: int = 3) -> JobSpec:
    return JobSpec(type="t", payload={"n": n}, retries=retries, queue=queue, timeout=30.0)


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    yield c
    await c.aclose()


@pytest.fixture
def queue(client: aioredis.Redis) -> Queue:
    return Queue(client)


async def status(client: aioredis.Redis, job_id: str, queue: str = Q) -> str | None:
    value = await client.hget(job_key(queue, job_id), "status")
    return value.decode() if value is not None else None


async def pending_count(client: aioredis.Redis, queue: str = Q) -> int:
    return int((await client.xpending(key(queue, "stream"), GROUP))["pending"])


async def test_enqueue_writes_one_job_hash_and_one_stream_entry_per_job(queue: Queue, client: aioredis.Redis) -> None:
    ids = await queue.enqueue([spec(0), spec(1), spec(2)])

    assert len(set(ids)) == 3
    assert await client.xlen(key(Q, "stream")) == 3
    entries = await client.xrange(key(Q, "stream"))
    assert [fields[b"id"].decode() for _, fields in entries] == ids
    for n, job_id in enumerate(ids):
        record = {k.decode(): v.decode() for k, v in (await client.hgetall(job_key(Q, job_id))).items()}
        assert record["id"] == job_id
        assert record["type"] == "t"
        assert record["queue"] == Q
        assert record["payload"] == f'{{"n":{n}}}'
        assert record["status"] == "queued"
        assert record["attempts"] == "0"
        assert record["retries"] == "3"
        assert abs(float(record["enqueued_at"]) - time.time()) < 10
    assert await client.ttl(job_key(Q, ids[0])) == -1  # waiting jobs never expire
    assert (await queue.stats())[Q]["enqueued"] == 3


async def test_fetch_marks_jobs_active_with_attempt_1_and_returns_them(queue: Queue, client: aioredis.Redis) -> None:
    ids = await queue.enqueue([spec(0), spec(1)])

    jobs = await queue.fetch(client, Q, "a", 10, 100)

    assert [j.id for j in jobs] == ids
    for n, job in enumerate(jobs):
        assert job.type == "t"
        assert job.queue == Q
        assert job.payload == {"n": n}
        assert job.retries == 3
        assert job.attempts == 1
        assert job.timeout == 30.0
        assert await status(client, job.id) == "active"
        assert (await client.hget(job_key(Q, job.id), "worker")) == b"a"
        assert (await client.hget(job_key(Q, job.id), "delivery")).decode() == job.delivery
    assert await pending_count(client) == 2
    assert await queue.fetch(client, Q, "a", 10, 10) == []  # each entry is delivered once


async def test_fetch_returns_at_most_count_jobs(queue: Queue, client: aioredis.Redis) -> None:
    await queue.enqueue([spec(i) for i in range(5)])

    assert len(await queue.fetch(client, Q, "a", 2, 100)) == 2
    assert len(await queue.fetch(client, Q, "b", 10, 100)) == 3


async def test_finish_succeeded_acks_deletes_the_entry_stores_the_result_and_sets_a_ttl(
    queue: Queue, client: aioredis.Redis
) -> None:
    (job_id,) = await queue.enqueue([spec()])
    (job,) = await queue.fetch(client, Q, "a", 10, 100)

    assert await queue.finish([Outcome(job, "succeeded", '{"ok":true}')], RESULT_TTL, DEAD_TTL) == [True]

    assert await pending_count(client) == 0
    assert await client.xlen(key(Q, "stream")) == 0
    assert await status(client, job_id) == "succeeded"
    assert await client.hget(job_key(Q, job_id), "result") == b'{"ok":true}'
    assert await client.hget(job_key(Q, job_id), "finished_at") is not None
    assert await client.hget(job_key(Q, job_id), "delivery") is None
    assert 0 < await client.pttl(job_key(Q, job_id)) <= RESULT_TTL * 1000
    stats = (await queue.stats())[Q]
    assert stats["done"] == 1
    assert stats["failed"] == 0
    assert (stats["waiting"], stats["active"]) == (0, 0)


async def test_finish_records_a_batch_of_outcomes_in_one_call(queue: Queue, client: aioredis.Redis) -> None:
    await queue.enqueue([spec(i) for i in range(3)])
    jobs = await queue.fetch(client, Q, "a", 10, 100)
    outcomes = [
        Outcome(jobs[0], "succeeded", "1"),
        Outcome(jobs[1], "retry", "E: x", retry_at=time.time() + 60),
        Outcome(jobs[2], "dead", "E: y"),
    ]

    assert await queue.finish(outcomes, RESULT_TTL, DEAD_TTL) == [True, True, True]

    assert [await status(client, j.id) for j in jobs] == ["succeeded", "retrying", "dead"]
    stats = (await queue.stats())[Q]
    assert (stats["done"], stats["retried"], stats["failed"]) == (1, 1, 1)
    assert (stats["waiting"], stats["active"], stats["scheduled"], stats["dead"]) == (0, 0, 1, 1)


async def test_finish_refuses_a_stale_outcome_after_the_job_was_requeued(queue: Queue, client: aioredis.Redis) -> None:
    (job_id,) = await queue.enqueue([spec()])
    (old,) = await queue.fetch(client, Q, "a", 10, 100)
    assert await queue.requeue(Q, "a", only_if_dead=False) == 1
    assert await status(client, job_id) == "queued"
    before = (await queue.stats())[Q]

    assert await queue.finish([Outcome(old, "succeeded", "1")], RESULT_TTL, DEAD_TTL) == [False]

    assert await status(client, job_id) == "queued"
    assert await client.hget(job_key(Q, job_id), "result") is None
    assert await client.pttl(job_key(Q, job_id)) == -1
    after = (await queue.stats())[Q]
    assert after == before
    assert after["waiting"] == 1
    # The job is still there to be run: a new fetch delivers it as attempt 2.
    (again,) = await queue.fetch(client, Q, "b", 10, 100)
    assert again.id == job_id
    assert again.attempts == 2
    assert again.delivery != old.delivery


async def test_finish_refuses_a_stale_outcome_after_another_worker_took_the_job(
    queue: Queue, client: aioredis.Redis
) -> None:
    (job_id,) = await queue.enqueue([spec()])
    (old,) = await queue.fetch(client, Q, "a", 10, 100)
    await queue.requeue(Q, "a", only_if_dead=False)
    (new,) = await queue.fetch(client, Q, "b", 10, 100)

    assert await queue.finish([Outcome(old, "dead", "E: stale")], RESULT_TTL, DEAD_TTL) == [False]
    assert await status(client, job_id) == "active"
    assert await client.zcard(key(Q, "dead")) == 0

    assert await queue.finish([Outcome(new, "succeeded", "2")], RESULT_TTL, DEAD_TTL) == [True]
    assert await status(client, job_id) == "succeeded"
    stats = (await queue.stats())[Q]
    assert (stats["done"], stats["failed"]) == (1, 0)


async def test_requeue_only_if_dead_leaves_jobs_of_a_worker_with_a_heartbeat(queue: Queue, client: aioredis.Redis) -> None:
    ids = await queue.enqueue([spec(0), spec(1)])
    await queue.heartbeat([Q], "a", lease=30)
    await queue.fetch(client, Q, "a", 10, 100)

    assert await queue.requeue(Q, "a", only_if_dead=True) == -1

    assert [await status(client, i) for i in ids] == ["active", "active"]
    assert await pending_count(client) == 2
    assert await queue.consumers(Q) == ["a"]

    await queue.forget_worker([Q], "a")
    assert await queue.requeue(Q, "a", only_if_dead=True) == 2

    assert [await status(client, i) for i in ids] == ["queued", "queued"]
    assert await pending_count(client) == 0
    assert await client.xlen(key(Q, "stream")) == 2
    assert await queue.consumers(Q) == []  # the dead consumer is removed from the group
    stats = (await queue.stats())[Q]
    assert (stats["recovered"], stats["released"], stats["waiting"]) == (2, 0, 2)


async def test_requeue_only_if_dead_recovers_once_the_heartbeat_expires(queue: Queue, client: aioredis.Redis) -> None:
    (job_id,) = await queue.enqueue([spec()])
    await queue.heartbeat([Q], "a", lease=0.2)
    await queue.fetch(client, Q, "a", 10, 100)
    assert await queue.requeue(Q, "a", only_if_dead=True) == -1

    async def recovered() -> bool:
        return await queue.requeue(Q, "a", only_if_dead=True) == 1

    await async_wait_for(recovered, 5, "the job to be recovered after the lease expired")
    assert await status(client, job_id) == "queued"
    (job,) = await queue.fetch(client, Q, "b", 10, 100)
    assert job.id == job_id
    assert job.attempts == 2


async def test_requeue_not_only_if_dead_hands_back_even_with_a_heartbeat(queue: Queue, client: aioredis.Redis) -> None:
    (job_id,) = await queue.enqueue([spec()])
    await queue.heartbeat([Q], "a", lease=30)
    await queue.fetch(client, Q, "a", 10, 100)

    assert await queue.requeue(Q, "a", only_if_dead=False) == 1

    assert await status(client, job_id) == "queued"
    assert (await queue.stats())[Q]["released"] == 1


async def test_requeue_skips_a_delivery_whose_job_already_finished(queue: Queue, client: aioredis.Redis) -> None:
    ids = await queue.enqueue([spec(0), spec(1)])
    jobs = await queue.fetch(client, Q, "a", 10, 100)
    assert await queue.finish([Outcome(jobs[0], "succeeded", "1")], RESULT_TTL, DEAD_TTL) == [True]

    assert await queue.requeue(Q, "a", only_if_dead=False) == 1

    assert await status(client, ids[0]) == "succeeded"
    assert await status(client, ids[1]) == "queued"
    assert await client.xlen(key(Q, "stream")) == 1


async def test_finish_retry_schedules_the_job_and_promote_returns_it_to_the_stream_when_due(
    queue: Queue, client: aioredis.Redis
) -> None:
    (job_id,) = await queue.enqueue([spec()])
    (job,) = await queue.fetch(client, Q, "a", 10, 100)
    retry_at = time.time() + 0.3

    assert await queue.finish([Outcome(job, "retry", "ValueError: x", retry_at=retry_at)], RESULT_TTL, DEAD_TTL) == [True]

    assert await status(client, job_id) == "retrying"
    assert await client.hget(job_key(Q, job_id), "error") == b"ValueError: x"
    assert await client.zscore(key(Q, "scheduled"), job_id) == int(retry_at * 1000)
    assert await client.xlen(key(Q, "stream")) == 0
    assert await pending_count(client) == 0
    assert await client.pttl(job_key(Q, job_id)) == -1  # a job still to be run does not expire

    moved, next_due = await queue.promote(Q)
    if time.time() < retry_at - 0.01:  # not due yet: nothing moves and the due time is reported
        assert moved == 0
        assert next_due == pytest.approx(retry_at, abs=0.002)
        assert await status(client, job_id) == "retrying"

    async def promoted() -> bool:
        n, _ = await queue.promote(Q)
        return n == 1

    await async_wait_for(promoted, 5, "the retry to be promoted")
    assert time.time() >= retry_at - 0.002
    assert await status(client, job_id) == "queued"
    assert await client.zcard(key(Q, "scheduled")) == 0
    assert await queue.promote(Q) == (0, None)
    (again,) = await queue.fetch(client, Q, "a", 10, 100)
    assert again.id == job_id
    assert again.attempts == 2


async def test_promote_moves_only_due_jobs_and_reports_the_next_due_time(queue: Queue, client: aioredis.Redis) -> None:
    ids = await queue.enqueue([spec(0), spec(1)])
    jobs = await queue.fetch(client, Q, "a", 10, 100)
    later = time.time() + 3600
    await queue.finish([Outcome(jobs[0], "retry", "E", retry_at=time.time() - 1),
                        Outcome(jobs[1], "retry", "E", retry_at=later)], RESULT_TTL, DEAD_TTL)

    moved, next_due = await queue.promote(Q)

    assert moved == 1
    assert next_due == pytest.approx(later, abs=0.002)
    assert await status(client, ids[0]) == "queued"
    assert await status(client, ids[1]) == "retrying"


async def test_finish_dead_adds_to_the_dead_set_and_sets_the_dead_ttl(queue: Queue, client: aioredis.Redis) -> None:
    (job_id,) = await queue.enqueue([spec()])
    (job,) = await queue.fetch(client, Q, "a", 10, 100)

    assert await queue.finish([Outcome(job, "dead", "RuntimeError: gone")], RESULT_TTL, DEAD_TTL) == [True]

    assert await status(client, job_id) == "dead"
    assert await client.hget(job_key(Q, job_id), "error") == b"RuntimeError: gone"
    assert await client.zscore(key(Q, "dead"), job_id) is not None
    pttl = await client.pttl(job_key(Q, job_id))
    assert DEAD_TTL * 1000 - 5000 < pttl <= DEAD_TTL * 1000
    assert await pending_count(client) == 0
    assert await client.xlen(key(Q, "stream")) == 0
    stats = (await queue.stats())[Q]
    assert (stats["dead"], stats["failed"], stats["done"]) == (1, 1, 0)


async def test_stats_counts_waiting_active_scheduled_and_dead_per_queue(queue: Queue, client: aioredis.Redis) -> None:
    await queue.enqueue([spec(i, queue="q1") for i in range(4)])
    await queue.enqueue([spec(i, queue="q2") for i in range(3)])
    await queue.fetch(client, "q1", "a", 1, 100)  # q1: 3 waiting, 1 active
    jobs = await queue.fetch(client, "q2", "a", 3, 100)
    await queue.finish([Outcome(jobs[0], "retry", "E", retry_at=time.time() + 3600),
                        Outcome(jobs[1], "dead", "E")], RESULT_TTL, DEAD_TTL)  # q2: 1 active, 1 sched., 1 dead

    stats = await queue.stats()

    assert set(stats) == {"q1", "q2"}
    pick = ("waiting", "active", "scheduled", "dead")
    assert {f: stats["q1"][f] for f in pick} == {"waiting": 3, "active": 1, "scheduled": 0, "dead": 0}
    assert {f: stats["q2"][f] for f in pick} == {"waiting": 0, "active": 1, "scheduled": 1, "dead": 1}
    assert (stats["q1"]["enqueued"], stats["q2"]["enqueued"]) == (4, 3)


async def test_stats_of_an_empty_store_is_empty(queue: Queue) -> None:
    assert await queue.stats() == {}


async def test_all_keys_of_a_queue_share_its_cluster_hash_tag(queue: Queue, client: aioredis.Redis) -> None:
    await queue.enqueue([spec(queue="mail")])
    jobs = await queue.fetch(client, "mail", "a", 1, 100)
    await queue.heartbeat(["mail"], "a", lease=30)
    await queue.finish([Outcome(jobs[0], "dead", "E")], RESULT_TTL, DEAD_TTL)

    names = [k.decode() for k in await client.keys("*") if k != b"wq:queues"]
    assert names
    assert all(n.startswith("wq:{mail}:") for n in names), names


async def test_the_same_scripts_work_on_the_embedded_fakeredis_store() -> None:
    import fakeredis

    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    try:
        queue = Queue(client)
        ids = await queue.enqueue([spec(0), spec(1)])
        jobs = await queue.fetch(client, Q, "a", 10, 100)
        assert [j.id for j in jobs] == ids
        assert [j.attempts for j in jobs] == [1, 1]
        assert await queue.finish([Outcome(jobs[0], "succeeded", "1"), Outcome(jobs[1], "dead", "E")],
                                  RESULT_TTL, DEAD_TTL) == [True, True]
        assert await status(client, ids[0]) == "succeeded"
        assert await status(client, ids[1]) == "dead"
        stats = (await queue.stats())[Q]
        assert (stats["waiting"], stats["active"], stats["done"], stats["failed"], stats["dead"]) == (0, 0, 1, 1, 1)
    finally:
        await client.aclose()
