"""The store's verbs: everything workqueue asks of Redis, for every queue, behind one boundary.

`Queue` owns its connections and its scripts; each verb is wrapped by `boundary`, so a caller sees
`StoreUnavailable` or `StoreError`, never a redis-py exception, and no caller knows a key name.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import AuthenticationError, ResponseError

from ..errors import ConfigError, ReplicaUnconfirmed
from ..job import Job, JobSpec, Outcome, Verdict, new_ids
from .address import Topology
from .connection import Connections, boundary, connect, sync_boundary
from .keys import GROUP, QUEUES_KEY, WORKERS_KEY, keys_of
from .scripts import (
    CancelCall,
    EnqueueCall,
    Enqueued,
    FetchCall,
    Fetched,
    FinishCall,
    ListCall,
    PromoteCall,
    RecoverCall,
    RedriveCall,
    Retention,
    Scripts,
    StatsCall,
    ms,
)

TIMINGS_KEPT = 1000  # attempts per queue behind the JSON percentiles
JOBS_PER_SCRIPT = 5000  # most jobs one enqueue script writes (more requests wait for the next)

Waiting = tuple[list[JobSpec], int, "asyncio.Future[list[Enqueued]]"]  # one request: jobs, max length, answer


@dataclass(frozen=True, slots=True)
class Inspection:
    cluster_node: bool = False  # a one-server URL that points at a node of a Redis Cluster
    policies: dict[str, str] = field(default_factory=dict)  # maxmemory-policy of each (master) node

    def risks(self) -> list[str]:
        """What an operator must hear about: an eviction policy that can drop jobs silently."""
        return [f"Redis {node} has maxmemory-policy {policy!r}: when it reaches maxmemory it evicts keys, "
                "and job records and queued jobs can vanish without a trace; set maxmemory-policy noeviction"
                for node, policy in sorted(self.policies.items()) if policy and policy != "noeviction"]


class Queue:
    """Job storage and delivery on one Redis (or the embedded store)."""

    def __init__(self, connections: Connections, retention: Retention, replica_wait: float | None = None) -> None:
        """`replica_wait`: with `durability = "replica"`, how long a write waits for a replica to
        confirm it (seconds); None (durability "primary") does not wait."""
        self.connections = connections
        self.replica_wait = replica_wait
        # Any: redis-py annotates each command as `Awaitable[T] | T` for both clients at once.
        self.client: Any = connections.main
        self.retention = retention
        self.scripts = Scripts.register(connections)
        self.known_queues: set[str] = set()
        # Requests waiting to be enqueued together, per queue, and the task flushing each queue now.
        self.waiting: dict[str, list[Waiting]] = {}
        self.flushing: dict[str, asyncio.Task[None]] = {}

    @classmethod
    def open(cls, url: str, timeout: float, retention: Retention, replica_wait: float | None = None) -> Queue:
        return cls(connect(url, timeout), retention, replica_wait)

    async def close(self) -> None:
        await self.connections.close()

    @boundary
    async def ping(self) -> None:
        await self.client.ping()

    @boundary
    async def inspect(self) -> Inspection:
        """What workqueue must know of the Redis it was given, asked once at start-up and by /readyz.

        ConfigError when Redis refuses the URL's credentials: retrying cannot help."""
        if self.connections.embedded:
            return Inspection()
        try:
            if self.connections.topology is Topology.CLUSTER:
                await self.client.initialize()
                memory = await self.client.info("memory", target_nodes=self.client.get_primaries())
                return Inspection(policies={node: info.get("maxmemory_policy", "") for node, info in memory.items()})
            info = await self.client.info()
        except AuthenticationError as e:
            raise ConfigError(f"redis_url: Redis refused the credentials ({e}); check the user and password") from e
        return Inspection(cluster_node=bool(int(info.get("cluster_enabled", 0))),
                          policies={"redis": str(info.get("maxmemory_policy", ""))})

    @boundary
    async def ensure_queue(self, queue: str) -> None:
        """Create the queue's streams and consumer groups once per process (id 0: no job skipped)."""
        if queue in self.known_queues:
            return
        async with self.client.pipeline(transaction=False) as pipe:
            for stream in keys_of(queue).streams:
                pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
            pipe.sadd(QUEUES_KEY, queue)
            for reply in await pipe.execute(raise_on_error=False):
                if isinstance(reply, ResponseError) and "BUSYGROUP" not in str(reply):
                    raise reply
        self.known_queues.add(queue)

    @boundary
    async def queues(self) -> list[str]:
        names = await self.client.smembers(QUEUES_KEY)
        return sorted(n.decode() for n in names)

    # -- producing ----------------------------------------------------------------------------

    @boundary
    async def enqueue(self, specs: Sequence[JobSpec], max_lengths: Mapping[str, int]) -> list[Enqueued]:
        """Store and publish one request's jobs, all or nothing.

        Raises ValidationError (409) when an idempotency key names different work, QueueFull when a
        queue is at its maximum length; either way nothing is enqueued.
        """
        by_queue: dict[str, list[int]] = {}
        for i, spec in enumerate(specs):
            by_queue.setdefault(spec.queue, []).append(i)
        if len(by_queue) == 1:
            (queue,) = by_queue
            return await self.join(queue, list(specs), max_lengths.get(queue, 0))
        # One script per queue (separate cluster slots), so check every queue before writing any.
        for dry_run in (True, False):
            answers: dict[int, Enqueued] = {}
            for queue, indexes in by_queue.items():
                (done,) = await self.run_enqueue(queue, [[specs[i] for i in indexes]], max_lengths.get(queue, 0),
                                                 dry_run)
                if isinstance(done, Exception):
                    raise done
                answers.update(zip(indexes, done))
        return [answers[i] for i in range(len(specs))]

    async def join(self, queue: str, specs: list[JobSpec], max_length: int) -> list[Enqueued]:
        """Enqueue together with the other requests that arrive meanwhile: one script call carries
        them all (each still all or nothing), so concurrent requests share one round trip."""
        future: asyncio.Future[list[Enqueued]] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(queue, []).append((specs, max_length, future))
        if queue not in self.flushing:
            self.flushing[queue] = asyncio.create_task(self.flush(queue), name=f"workqueue-enqueue-{queue}")
        return await future

    async def flush(self, queue: str) -> None:
        try:
            while self.waiting.get(queue):
                waiting = self.waiting[queue]
                # Bound one script's work: Redis runs nothing else while a script runs.
                size, cut = 0, 0
                while cut < len(waiting) and (cut == 0 or size + len(waiting[cut][0]) <= JOBS_PER_SCRIPT):
                    size += len(waiting[cut][0])
                    cut += 1
                batch, self.waiting[queue] = waiting[:cut], waiting[cut:]
                try:
                    results = await self.enqueue_batch(queue, [specs for specs, _, _ in batch], batch[0][1])
                except BaseException as e:  # Redis unreachable: every request of the batch hears it
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(e)
                    if isinstance(e, asyncio.CancelledError):
                        raise
                    continue
                for (_, _, future), result in zip(batch, results):
                    if not future.done():
                        if isinstance(result, Exception):
                            future.set_exception(result)
                        else:
                            future.set_result(result)
        finally:
            del self.flushing[queue]

    @boundary
    async def enqueue_batch(self, queue: str, requests: list[list[JobSpec]],
                            max_length: int) -> list[list[Enqueued] | Exception]:
        return await self.run_enqueue(queue, requests, max_length)

    async def run_enqueue(self, queue: str, requests: list[list[JobSpec]], max_length: int,
                          dry_run: bool = False) -> list[list[Enqueued] | Exception]:
        """One enqueue script call for several requests; per request its jobs, or the error refusing it."""
        await self.ensure_queue(queue)
        call = EnqueueCall(keys_of(queue), [list(zip(new_ids(len(specs)), specs)) for specs in requests],
                           max_length, dry_run)
        if self.replica_wait is None or dry_run:
            return await self.scripts.enqueue(call)
        results, acked = await self.scripts.enqueue.replicated(call, ms(self.replica_wait))
        # An answer naming an existing job (a repeated idempotency key) waits for a replica too.
        if acked < 1 and any(isinstance(r, list) for r in results):
            raise ReplicaUnconfirmed(
                f"no replica of queue {queue!r}'s Redis master confirmed the write within {self.replica_wait:g} s "
                "(durability = \"replica\"): the job may exist; retry with the same Idempotency-Key")
        return results

    # -- consuming ----------------------------------------------------------------------------

    @boundary
    async def fetch(self, queue: str, consumer: str, count: int, lowest_first: bool = False) -> Fetched:
        """Deliver up to `count` waiting jobs, highest priority first (lowest first when asked, so
        low priorities are never starved for good); poison jobs are made dead instead."""
        call = FetchCall(keys_of(queue), consumer, count, self.retention, lowest_first)
        try:
            return await self.scripts.fetch(call)
        except ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
        # Redis lost its data (restarted without persistence): recreate streams and groups.
        self.known_queues.clear()
        await self.ensure_queue(queue)
        return await self.scripts.fetch(call)

    @boundary
    async def wait(self, queue: str, cursors: list[str], block_ms: int) -> None:
        """Block until an entry newer than the cursors (highest level first, as `fetch` gives them)
        appears on one of the queue's streams.

        A plain XREAD only watches, it delivers nothing, so cancelling it can never strand a job.
        """
        streams = keys_of(queue).streams[::-1]
        await self.connections.blocking.xread(dict(zip(streams, cursors)), count=1, block=block_ms)

    @boundary
    async def finish(self, outcomes: Sequence[Outcome]) -> list[Verdict]:
        """Record outcomes and ack their deliveries, one script call per queue."""
        verdicts: dict[int, Verdict] = {}
        by_queue: dict[str, list[int]] = {}
        for i, outcome in enumerate(outcomes):
            by_queue.setdefault(outcome.job.queue, []).append(i)
        unconfirmed = []
        for queue, indexes in by_queue.items():
            call = FinishCall(keys_of(queue), [outcomes[i] for i in indexes], self.retention, TIMINGS_KEPT)
            if self.replica_wait is None:
                verdicts.update(zip(indexes, await self.scripts.finish(call)))
                continue
            replies, acked = await self.scripts.finish.replicated(call, ms(self.replica_wait))
            verdicts.update(zip(indexes, replies))
            if acked < 1:
                unconfirmed.append(queue)
        answer = [verdicts[i] for i in range(len(outcomes))]
        if unconfirmed:
            raise ReplicaUnconfirmed(f"no replica confirmed the outcomes recorded on {', '.join(unconfirmed)} "
                                     f"within {self.replica_wait:g} s", answer)
        return answer

    @boundary
    async def promote(self, queue: str, limit: int = 1000) -> tuple[int, float | None]:
        """Move due delayed jobs and retries onto their streams.

        Returns (moved, epoch seconds of the next scheduled job or None)."""
        return await self.scripts.promote(PromoteCall(keys_of(queue), time.time(), limit))

    # -- leases -------------------------------------------------------------------------------

    @sync_boundary
    def renew_lease(self, queues: Iterable[str], consumer: str, lease: float, about: dict[str, Any]) -> None:
        """Renew a worker's lease on every queue it serves and publish what it is doing. Synchronous:
        the worker's heartbeat thread calls it, so a blocked event loop cannot let the lease lapse."""
        client = self.connections.threaded
        names = [keys_of(queue).worker(consumer) for queue in queues]
        pipe: Any = client.pipeline(transaction=False)
        for name in names:
            pipe.set(name, "1", px=int(lease * 1000))
        # The description for /workers is best-effort: when Redis is full it keeps its last value.
        pipe.hset(WORKERS_KEY, consumer, orjson.dumps({**about, "last_heartbeat": time.time(), "lease": lease}))
        replies = pipe.execute(raise_on_error=False)
        refused = [name for name, reply in zip(names, replies) if isinstance(reply, Exception)]
        if not refused:
            return
        # A full Redis refuses SET but allows extending a key's expiry: the lease holds while the
        # worker drains, which is what frees memory.
        pipe = client.pipeline(transaction=False)
        for name in refused:
            pipe.pexpire(name, int(lease * 1000))
        for reply in pipe.execute(raise_on_error=False):
            if reply is not True:
                first = next(r for r in replies if isinstance(r, Exception))
                raise reply if isinstance(reply, Exception) else first

    @boundary
    async def forget_worker(self, queues: Iterable[str], consumer: str) -> None:
        async with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:  # one DEL per key: the queues' keys live in different cluster slots
                pipe.delete(keys_of(queue).worker(consumer))
            pipe.hdel(WORKERS_KEY, consumer)
            await pipe.execute()

    @boundary
    async def workers(self) -> list[dict[str, Any]]:
        """Live workers from their heartbeats; entries of workers gone for a lease are removed."""
        now = time.time()
        live, gone = [], []
        for name, raw in (await self.client.hgetall(WORKERS_KEY)).items():
            about = orjson.loads(raw)
            if now - about["last_heartbeat"] > about["lease"]:
                gone.append(name)
            else:
                live.append({"name": name.decode(), **about})
        if gone:
            await self.client.hdel(WORKERS_KEY, *gone)
        return sorted(live, key=lambda w: str(w["name"]))

    @boundary
    async def recover(self, queue: str, me: str, release: bool = False, limit: int = 1000) -> tuple[int, list[str]]:
        """Requeue unfinished deliveries: of every worker whose heartbeat expired (the reaper), or,
        with release, this worker's own (graceful shutdown). Returns (moved, reaped worker names)."""
        return await self.scripts.recover(RecoverCall(keys_of(queue), me, "release" if release else "reap", limit))

    @boundary
    async def recover_orphans(self, queue: str, me: str, held: Iterable[Job], idle: float) -> int:
        """Requeue this worker's deliveries that it does not hold (`held`: what it runs, has fetched
        ahead or is recording) and that have been pending for `idle` seconds: after a failover lost
        the last writes of a master, such a job would otherwise stay active under a live worker's
        name for ever. Returns how many moved."""
        jobs = [(job.level, job.delivery) for job in held if job.queue == queue]
        moved, _ = await self.scripts.recover(RecoverCall(keys_of(queue), me, "orphans", held=jobs, idle=idle))
        return moved

    # -- control ------------------------------------------------------------------------------

    @boundary
    async def locate(self, job_id: str) -> str | None:
        """The queue holding the job, or None."""
        queues = await self.queues()
        async with self.client.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.exists(keys_of(queue).job(job_id))
            found = await pipe.execute()
        return next((q for q, n in zip(queues, found) if n), None)

    @boundary
    async def get_job(self, job_id: str) -> dict[str, str] | None:
        """The job record, decoded; None if unknown (or expired)."""
        queue = await self.locate(job_id)
        if queue is None:
            return None
        raw = await self.client.hgetall(keys_of(queue).job(job_id))
        return {k.decode(): v.decode() for k, v in raw.items()} or None

    @boundary
    async def cancel(self, job_id: str) -> tuple[str, str] | None:
        """Cancel a job. Returns (previous status, status now), or None for an unknown job."""
        queue = await self.locate(job_id)
        if queue is None:
            return None
        return await self.scripts.cancel(CancelCall(keys_of(queue), job_id, self.retention))

    @boundary
    async def cancel_counters(self, queues: Sequence[str]) -> list[int]:
        """How many running jobs have been cancelled on each queue, ever: a cheap thing to watch."""
        # One GET per queue: the counters live in different cluster slots.
        values = [await self.client.get(keys_of(q).cancels) for q in queues]
        return [int(v or 0) for v in values]

    @boundary
    async def statuses(self, jobs: Iterable[Job]) -> list[str | None]:
        async with self.client.pipeline(transaction=False) as pipe:
            for job in jobs:
                pipe.hget(keys_of(job.queue).job(job.id), "status")
            return [s.decode() if s else None for s in await pipe.execute()]

    @boundary
    async def job_statuses(self, queue: str, ids: Sequence[str]) -> list[str | None]:
        keys = keys_of(queue)
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys.job(job_id), "status")
            return [s.decode() if s else None for s in await pipe.execute()]

    @boundary
    async def ended_cursor(self, queue: str) -> str:
        """Where the queue's stream of ended jobs is now: `watch_ended` from here sees what ends next."""
        last = await self.client.xrevrange(keys_of(queue).ended, "+", "-", count=1)
        return str(last[0][0].decode()) if last else "0-0"

    @boundary
    async def watch_ended(self, queue: str, cursor: str, block_ms: int) -> tuple[str, list[str]]:
        """The ids of jobs that ended after `cursor`, waiting up to `block_ms` for one; and the new
        cursor. One blocking read serves every request waiting on the queue."""
        stream = keys_of(queue).ended
        reply = await self.connections.blocking.xread({stream: cursor}, block=block_ms, count=1000)
        ids: list[str] = []
        for _, entries in reply or []:
            for entry, fields in entries:
                cursor = entry.decode()
                ids += fields[b"ids"].decode().split(",")
        return cursor, ids

    @boundary
    async def last_tick(self, queue: str, schedule: str) -> float | None:
        value = await self.client.get(keys_of(queue).schedule(schedule))
        return float(value) if value is not None else None

    @boundary
    async def set_last_tick(self, queue: str, schedule: str, tick: float) -> None:
        await self.client.set(keys_of(queue).schedule(schedule), repr(tick))

    @boundary
    async def jobs(self, queue: str, status: str, task_type: str | None, limit: int,
                   cursor: str | None) -> tuple[list[dict[str, str]], str | None]:
        """One page of the queue's jobs in `status` (see lua/list.lua for the order), as records,
        and the cursor of the next page (None at the end)."""
        ids, next_cursor = await self.scripts.list(ListCall(keys_of(queue), status, task_type, limit, cursor))
        keys = keys_of(queue)
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(keys.job(job_id))
            raw = await pipe.execute()
        records = [{k.decode(): v.decode() for k, v in r.items()} for r in raw if r]
        return records, next_cursor

    # -- dead letters -------------------------------------------------------------------------

    @boundary
    async def dead(self, queue: str | None, task_type: str | None, limit: int,
                   before: float | None) -> list[dict[str, str]]:
        """Dead job records, most recent death first, that died before `before` (a cursor)."""
        queues = [queue] if queue else await self.queues()
        found: list[tuple[float, str, str]] = []
        top = f"({before}" if before is not None else "+inf"
        for q in queues:
            # Type filtering happens on the records, so read more than `limit` ids per step.
            offset = 0
            while True:
                page = await self.client.zrevrangebyscore(keys_of(q).dead, top, "-inf", start=offset, num=limit * 4,
                                                          withscores=True)
                offset += len(page)
                if task_type is None:
                    found += [(score, q, member.decode()) for member, score in page]
                else:
                    kinds = await self.types(q, [m.decode() for m, _ in page])
                    found += [(s, q, m.decode()) for (m, s), t in zip(page, kinds) if t == task_type]
                if len(page) < limit * 4 or sum(1 for f in found if f[1] == q) >= limit:
                    break
        found.sort(reverse=True)
        records = []
        for score, q, job_id in found[:limit]:
            raw = await self.client.hgetall(keys_of(q).job(job_id))
            if raw:
                record = {k.decode(): v.decode() for k, v in raw.items()}
                record["died_at"] = repr(score)
                records.append(record)
        return records

    @boundary
    async def types(self, queue: str, ids: list[str]) -> list[str | None]:
        """The task type of each job (None for a record that is gone)."""
        async with self.client.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hget(keys_of(queue).job(job_id), "type")
            return [t.decode() if t else None for t in await pipe.execute()]

    @boundary
    async def redrive(self, queue: str, ids: Sequence[str]) -> list[str]:
        """Send dead jobs back to their queue with a fresh set of attempts. Returns the ids moved."""
        if not ids:
            return []
        return await self.scripts.redrive(RedriveCall(keys_of(queue), ids))

    @boundary
    async def drop_dead(self, queue: str, job_id: str) -> bool:
        """Delete a dead job; any other job is left alone. Whoever removes the id from the dead set
        owns the record: a concurrent re-drive cannot have it."""
        keys = keys_of(queue)
        if not await self.client.zrem(keys.dead, job_id):
            return False
        await self.client.delete(keys.job(job_id))
        return True

    # -- numbers ------------------------------------------------------------------------------

    @boundary
    async def stats(self) -> dict[str, dict[str, Any]]:
        """Per queue: waiting, active, scheduled and dead counts plus the cumulative counters."""
        return {queue: await self.scripts.stats(StatsCall(keys_of(queue), self.retention.dead_ttl))
                for queue in await self.queues()}

    @boundary
    async def timings(self, queue: str) -> list[tuple[str, float, float]]:
        """(type, wait ms, run ms) of the queue's most recent attempts."""
        rows = []
        for raw in await self.client.lrange(keys_of(queue).timings, 0, -1):
            task_type, wait, run = raw.decode().rsplit(" ", 2)
            rows.append((task_type, float(wait), float(run)))
        return rows
