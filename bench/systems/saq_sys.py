"""SAQ's benchmark driver (runs in bench/.venvs/saq). Delays use the job's `scheduled` time."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import RECORDER, SLEEP_S, emit, parse, pooled, steady, wait_warm
from saq import Job, Queue, Worker

_start, _end, _seen = RECORDER.start, RECORDER.end, RECORDER.ids.add

# SAQ's start-up sweep can abort and retry a job the worker has just dequeued (its status not yet
# 'active'), so a job may run twice: the handlers keep job keys, and the orchestrator checks that
# every job ran at least once and reports the extra runs.


async def noop(ctx, *, i):
    _start()
    _seen(ctx["job"].key)
    _end()


async def sleep(ctx, *, i):
    _start()
    _seen(ctx["job"].key)
    await asyncio.sleep(SLEEP_S)
    _end()


async def stamp(ctx, *, i, due, warm=False):
    if not warm:
        _seen(ctx["job"].key)
    RECORDER.stamp(due, warm)


async def main() -> None:
    args = parse()
    queue = Queue.from_url(args.redis)
    await queue.connect()
    try:
        if args.command == "worker":
            # SAQ's worker stops on SIGTERM by itself (start() returns).
            worker = Worker(queue, functions=[noop, sleep, stamp], concurrency=args.concurrency)
            await worker.start()
            RECORDER.dump(final=True)
        elif args.command == "fill":
            async def one(i: int) -> None:
                await queue.enqueue(args.kind, i=i)
            emit({"n": args.n, "seconds": await pooled(args.n, args.clients, one)})
        elif args.command == "steady":
            await wait_warm(args.warm, lambda: queue.enqueue("stamp", i=-1, due=time.time(), warm=True))

            async def one(i: int, due: float, delay: float) -> None:
                if delay:
                    await queue.enqueue(Job("stamp", kwargs={"i": i, "due": due}, scheduled=due))
                else:
                    await queue.enqueue("stamp", i=i, due=due)
            emit(await steady(args.n, args.rate, args.delay, one))
        elif args.command == "verify":
            counts = {kind: await queue.count(kind) for kind in ("queued", "active", "incomplete")}
            # Finished jobs are kept (ttl 600 s by default) with their status.
            keys = [k async for k in queue.redis.scan_iter(f"saq:job:{queue.name}:*", count=1000)]
            statuses: dict[str, int] = {}
            for s in range(0, len(keys), 1000):
                for raw in await queue.redis.mget(keys[s : s + 1000]):
                    status = json.loads(raw).get("status") if raw else "missing"
                    statuses[status] = statuses.get(status, 0) + 1
            unfinished = sum(n for st, n in statuses.items() if st in ("new", "queued", "active", "missing"))
            emit({"ok": not any(counts.values()) and len(keys) == args.n and not unfinished, **counts,
                  "records": len(keys), "statuses": statuses})
    finally:
        await queue.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
