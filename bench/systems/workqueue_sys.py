"""workqueue's benchmark client: in-process Queue.enqueue (the fast path, no HTTP), and the
end-of-run check. The worker is the real `python -m workqueue --role worker`, with the drop-in
plugin bench/plugins/benchtasks; the orchestrator starts it.

    fill    N jobs of --kind, in batches of --batch (variant "batch") or one per call ("single")
    steady  stamp jobs at --rate per second, each with --delay seconds (0: at once)
    verify  every job succeeded and nothing is left waiting, running or scheduled
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchlib import emit, parse, pooled, steady, wait_warm

from workqueue.config import Settings
from workqueue.job import JobSpec
from workqueue.store import Queue, Retention

DEFAULTS = Settings()


def spec(kind: str, payload: dict, run_at: float | None = None) -> JobSpec:
    return JobSpec(type=kind, payload=payload, retries=DEFAULTS.default_retries, queue="default",
                   timeout=DEFAULTS.default_timeout, run_at=run_at)


async def main() -> None:
    args = parse()
    queue = Queue.open(args.redis, 10.0, Retention(DEFAULTS.result_ttl, DEFAULTS.dead_ttl, DEFAULTS.dead_max,
                                                   DEFAULTS.idempotency_ttl))
    try:
        if args.command == "fill":
            await queue.ensure_queue("default")
            if args.variant == "single":
                async def one(i: int) -> None:
                    await queue.enqueue([spec(args.kind, {"i": i})], {})
                seconds = await pooled(args.n, args.clients, one)
            else:
                batches = [range(s, min(s + args.batch, args.n)) for s in range(0, args.n, args.batch)]

                async def one(b: int) -> None:
                    await queue.enqueue([spec(args.kind, {"i": i}) for i in batches[b]], {})
                seconds = await pooled(len(batches), args.clients, one)
            emit({"n": args.n, "seconds": seconds})
        elif args.command == "steady":
            await queue.ensure_queue("default")
            await wait_warm(args.warm, lambda: queue.enqueue([spec("stamp", {"due": time.time(), "warm": True})], {}))

            async def one(i: int, due: float, delay: float) -> None:
                run_at = due if delay else None
                await queue.enqueue([spec("stamp", {"i": i, "due": due}, run_at)], {})
            emit(await steady(args.n, args.rate, args.delay, one))
        elif args.command == "verify":
            row = (await queue.stats()).get("default", {})
            left = {k: row.get(k) for k in ("waiting", "active", "scheduled", "dead")}
            ok = row.get("done") == args.n and not any(left.values())
            emit({"ok": ok, "done": row.get("done"), "enqueued": row.get("enqueued"), **left})
        else:
            raise SystemExit("workqueue's worker is `python -m workqueue --role worker`")
    finally:
        await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
