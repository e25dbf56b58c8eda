"""arq's benchmark driver (runs in bench/.venvs/arq). Variant "poll10" sets poll_delay=0.01."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker
from benchlib import RECORDER, SLEEP_S, cancel, emit, parse, pooled, steady, wait_warm

_start, _end = RECORDER.start, RECORDER.end


async def noop(ctx, i):
    _start()
    _end()


async def sleep(ctx, i):
    _start()
    await asyncio.sleep(SLEEP_S)
    _end()


async def stamp(ctx, i, due, warm=False):
    RECORDER.stamp(due, warm)


async def main() -> None:
    args = parse()
    settings = RedisSettings.from_dsn(args.redis)
    if args.command == "worker":
        worker = Worker(functions=[noop, sleep, stamp], redis_settings=settings, max_jobs=args.concurrency,
                        poll_delay=0.01 if args.variant == "poll10" else 0.5, handle_signals=False)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        task = asyncio.create_task(worker.async_run())
        await stop.wait()
        RECORDER.dump(final=True)  # the orchestrator stops us only once Redis shows every job finished
        await cancel(task)
        try:
            await worker.close()
        except (asyncio.CancelledError, Exception):
            pass
        return
    redis = await create_pool(settings)
    try:
        if args.command == "fill":
            async def one(i: int) -> None:
                await redis.enqueue_job(args.kind, i)
            emit({"n": args.n, "seconds": await pooled(args.n, args.clients, one)})
        elif args.command == "steady":
            await wait_warm(args.warm, lambda: redis.enqueue_job("stamp", -1, time.time(), True))

            async def one(i: int, due: float, delay: float) -> None:
                await redis.enqueue_job("stamp", i, due, _defer_by=delay or None)
            emit(await steady(args.n, args.rate, args.delay, one))
        elif args.command == "verify":
            queued = await redis.zcard("arq:queue")
            in_progress = len([k async for k in redis.scan_iter("arq:in-progress:*", count=1000)])
            results = len([k async for k in redis.scan_iter("arq:result:*", count=1000)])
            emit({"ok": queued == 0 and in_progress == 0 and results == args.n,
                  "queued": queued, "in_progress": in_progress, "results": results})
    finally:
        await redis.aclose()


if __name__ == "__main__":
    asyncio.run(main())
