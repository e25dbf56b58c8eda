"""taskiq's benchmark driver with taskiq-redis's stream broker (runs in bench/.venvs/taskiq).

The worker is taskiq's own receiver, run in-process as `taskiq worker` runs it in each of its
worker processes (run_receiver_task, max_async_tasks = concurrency), so one process is measured.
The consumer group starts at id 0, so jobs queued before the worker started are delivered.
taskiq has no per-job delay in its brokers (delays need the separate scheduler process): n/a.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import RECORDER, SLEEP_S, cancel, emit, parse, pooled, steady, wait_warm
from taskiq.api import run_receiver_task
from taskiq_redis import RedisStreamBroker

STREAM, GROUP = "taskiq", "taskiq"
args = parse()
broker = RedisStreamBroker(args.redis, queue_name=STREAM, consumer_group_name=GROUP, consumer_id="0")
_start, _end = RECORDER.start, RECORDER.end


@broker.task(task_name="noop")
async def noop(i: int) -> None:
    _start()
    _end()


@broker.task(task_name="sleep")
async def sleep(i: int) -> None:
    _start()
    await asyncio.sleep(SLEEP_S)
    _end()


@broker.task(task_name="stamp")
async def stamp(i: int, due: float, warm: bool = False) -> None:
    RECORDER.stamp(due, warm)


TASKS = {"noop": noop, "sleep": sleep, "stamp": stamp}


async def main() -> None:
    if args.command == "worker":
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        task = asyncio.create_task(run_receiver_task(broker, max_async_tasks=args.concurrency, run_startup=True))
        await stop.wait()
        RECORDER.dump(final=True)  # the orchestrator stops us only once Redis shows every job finished
        await cancel(task)
        await broker.shutdown()
        return
    await broker.startup()
    try:
        if args.command == "fill":
            kicker = TASKS[args.kind]

            async def one(i: int) -> None:
                await kicker.kiq(i)
            emit({"n": args.n, "seconds": await pooled(args.n, args.clients, one)})
        elif args.command == "steady":
            if args.delay:
                raise SystemExit("taskiq: no per-job delay")
            await wait_warm(args.warm, lambda: stamp.kiq(-1, time.time(), True))

            async def one(i: int, due: float, delay: float) -> None:
                await stamp.kiq(i, due)
            emit(await steady(args.n, args.rate, args.delay, one))
        elif args.command == "verify":
            from redis.asyncio import Redis
            async with Redis.from_url(args.redis) as r:
                groups = await r.xinfo_groups(STREAM)
                group = next(g for g in groups if g["name"] in (GROUP, GROUP.encode()))
                length = await r.xlen(STREAM)
            pending, lag, read = group["pending"], group.get("lag"), group.get("entries-read")
            emit({"ok": pending == 0 and lag == 0 and read == args.n and length == args.n,
                  "pending": pending, "lag": lag, "entries_read": read, "stream_length": length})
    finally:
        await broker.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
