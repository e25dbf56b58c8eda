"""workqueue's benchmark client: in-process Queue.enqueue (the fast path, no HTTP), and the
end-of-run check. The worker is the real `python -m workqueue --role worker`, with the drop-in
plugin bench/plugins/benchtasks; the orchestrator starts it.

    fill    N jobs of --kind, in batches of --batch (variant "batch") or one per call ("single"),
            spread round-robin over --queues (comma-separated, default "default": job i goes to
            queue i mod the number of queues; a batch holds one queue's jobs)
    steady  stamp jobs at --rate per second, each with --delay seconds (0: at once)
    verify  every job succeeded and nothing is left waiting, running or scheduled, summed over --queues

--redis may be any URL workqueue takes, redis+cluster://h:p,h:p,... included.
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


def spec(kind: str, payload: dict, run_at: float | None = None, queue: str = "default") -> JobSpec:
    return JobSpec(type=kind, payload=payload, retries=DEFAULTS.default_retries, queue=queue,
                   timeout=DEFAULTS.default_timeout, run_at=run_at)


async def main() -> None:
    args = parse()
    queue = Queue.open(args.redis, 10.0, Retention(DEFAULTS.result_ttl, DEFAULTS.dead_ttl, DEFAULTS.dead_max,
                                                   DEFAULTS.idempotency_ttl))
    try:
        names = [q.strip() for q in args.queues.split(",") if q.strip()]
        if args.command == "fill":
            for name in names:
                await queue.ensure_queue(name)
            if args.variant == "single":
                async def one(i: int) -> None:
                    await queue.enqueue([spec(args.kind, {"i": i}, queue=names[i % len(names)])], {})
                seconds = await pooled(args.n, args.clients, one)
            else:
                # Each queue's jobs (i mod len(names)) in batches of --batch, the queues' batches interleaved.
                per_queue = [[range(q, args.n, len(names))[s:s + args.batch] for s in range(0, args.n, args.batch)]
                             for q in range(len(names))]
                batches = [(q, b) for round_ in zip(*per_queue) for q, b in enumerate(round_) if b]

                async def one(b: int) -> None:
                    q, jobs = batches[b]
                    await queue.enqueue([spec(args.kind, {"i": i}, queue=names[q]) for i in jobs], {})
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
            stats = await queue.stats()
            rows = [stats.get(name, {}) for name in names]
            if len(names) == 1:  # as before: None where the queue has no such counter yet
                row = rows[0]
                done, enqueued = row.get("done"), row.get("enqueued")
                left = {k: row.get(k) for k in ("waiting", "active", "scheduled", "dead")}
            else:
                done, enqueued = (sum(r.get(k) or 0 for r in rows) for k in ("done", "enqueued"))
                left = {k: sum(r.get(k) or 0 for r in rows) for k in ("waiting", "active", "scheduled", "dead")}
            ok = done == args.n and not any(left.values())
            per_queue = {"per_queue": {name: r.get("done") for name, r in zip(names, rows)}} if len(names) > 1 else {}
            emit({"ok": ok, "done": done, "enqueued": enqueued, **left, **per_queue})
        else:
            raise SystemExit("workqueue's worker is `python -m workqueue --role worker`")
    finally:
        await queue.close()


if __name__ == "__main__":
    asyncio.run(main())
