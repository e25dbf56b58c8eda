"""An HTTP load generator for POST /enqueue: an aiohttp client with many connections.

    python bench/loadgen.py --url http://127.0.0.1:8080/enqueue --jobs 20000 --connections 64 [--batch 500]

--batch 1 posts one job object per request; more posts arrays of that many jobs. Bodies are built
before the clock starts. Prints one line `BENCH {json}`: jobs, requests, seconds, statuses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

import aiohttp


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--jobs", type=int, required=True)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--type", default="noop")
    args = p.parse_args()

    def job(i: int) -> dict:
        return {"type": args.type, "payload": {"i": i}}

    if args.batch == 1:
        bodies = [json.dumps(job(i)).encode() for i in range(args.jobs)]
    else:
        bodies = [json.dumps([job(i) for i in range(s, min(s + args.batch, args.jobs))]).encode()
                  for s in range(0, args.jobs, args.batch)]
    statuses: Counter[int] = Counter()
    headers = {"Content-Type": "application/json"}
    pending = iter(bodies)
    connector = aiohttp.TCPConnector(limit=args.connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def loop() -> None:
            for body in pending:
                async with session.post(args.url, data=body, headers=headers) as response:
                    await response.read()
                    statuses[response.status] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(min(args.connections, len(bodies)))))
        seconds = time.perf_counter() - t0
    print("BENCH " + json.dumps({"jobs": args.jobs, "requests": len(bodies), "seconds": seconds,
                                 "statuses": {str(k): v for k, v in statuses.items()}}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
