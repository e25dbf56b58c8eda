"""What waiting requests cost Redis: GET /jobs/{id}?wait=N held open by 1, then by 10,000 clients.

    python -m bench.waiters [--waiters 10000] [--seconds 5]

Starts its own redis-server on a free port and a `python -m workqueue --role producer` (no worker, so
the jobs never end and the requests keep waiting), then measures the Redis commands per second (INFO
commandstats) while the requests wait: with 1 request, with N requests on one job, and with N
requests on N different jobs. Waiting requests should not each poll Redis: the figures should be
about the same. Prints a table; nothing is written.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def commandstats(port: int) -> dict[str, int]:
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"], capture_output=True, text=True)
    return {line.split(":")[0].removeprefix("cmdstat_"): int(line.split("calls=")[1].split(",")[0])
            for line in out.stdout.splitlines() if "calls=" in line}


async def measure(session: aiohttp.ClientSession, url: str, port: int, ids: list[str],
                  seconds: float) -> tuple[float, float, float]:
    """While one request per id waits (longer than the measurement): Redis commands per second in
    all, of them the reads that wait (XREAD), and the commands each request cost once when it came
    in (reading its job)."""
    before = commandstats(port)
    waiting = []
    for first in range(0, len(ids), 500):  # in waves: the listen backlog takes a few hundred at a time
        waiting += [asyncio.create_task(session.get(f"{url}/jobs/{job_id}", params={"wait": "60"}))
                    for job_id in ids[first:first + 500]]
        await asyncio.sleep(0.1)
    await asyncio.sleep(2)
    began, start = time.monotonic(), commandstats(port)
    await asyncio.sleep(seconds)
    end, elapsed = commandstats(port), time.monotonic() - began
    per_second = sum(end.values()) - sum(start.values()) - (end.get("info", 0) - start.get("info", 0))
    waits = end.get("xread", 0) - start.get("xread", 0)
    arrivals = sum(v - before.get(k, 0) for k, v in start.items() if k not in ("xread", "info"))
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)
    return per_second / elapsed, waits / elapsed, arrivals / max(1, len(ids))


async def run(args: argparse.Namespace, url: str, port: int) -> list[tuple[str, tuple[float, float, float]]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def enqueue(n: int) -> list[str]:
            body = [{"type": "noop", "payload": {"i": i}} for i in range(n)]
            ids: list[str] = []
            for first in range(0, n, 500):
                async with session.post(f"{url}/enqueue", json=body[first:first + 500]) as r:
                    ids += [a["id"] for a in await r.json()]
            return ids

        (one,) = await enqueue(1)
        many = await enqueue(args.waiters)
        rows = [("no request waiting", await measure(session, url, port, [], args.seconds)),
                ("1 request waiting", await measure(session, url, port, [one], args.seconds)),
                (f"{args.waiters:,} requests waiting on one job",
                 await measure(session, url, port, [one] * args.waiters, args.seconds)),
                (f"{args.waiters:,} requests waiting on {args.waiters:,} jobs",
                 await measure(session, url, port, many, args.seconds))]
    return rows


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.waiters", description=__doc__.split("\n")[0])
    p.add_argument("--waiters", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wq-waiters-"))
    port, http_port = free_port(), free_port()
    redis = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", "",
                              "--appendonly", "no", "--dir", str(work)], stdout=subprocess.DEVNULL)
    (work / "config.toml").write_text("\n".join([
        f'redis_url = "redis://127.0.0.1:{port}/0"', f'plugin_dirs = ["{ROOT / "bench" / "plugins"}"]',
        'log_level = "warning"', "max_batch = 1000"]) + "\n")
    producer = subprocess.Popen([sys.executable, "-m", "workqueue", "--role", "producer", "--port", str(http_port),
                                 "--config", str(work / "config.toml")], cwd=work, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{http_port}"
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", http_port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        rows = asyncio.run(run(args, url, port))
    finally:
        producer.terminate()
        producer.wait(10)
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'waiting requests':<44} {'commands/s':>11} {'XREAD/s':>8} {'commands per request, once':>27}")
    for name, (rate, waits, once) in rows:
        print(f"{name:<44} {rate:>11,.1f} {waits:>8,.1f} {once:>27,.1f}")


if __name__ == "__main__":
    main()
