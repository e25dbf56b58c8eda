"""What every system's benchmark worker and client share. Standard library only: this file is
imported inside each system's own virtualenv (arq, saq, taskiq, dramatiq, workqueue).

Workers are configured through the environment, so the real `python -m workqueue` worker can be
measured with a drop-in plugin exactly like the peers' in-process workers:

    BENCH_EXPECT   jobs the measurement runs (warm-up jobs excluded)
    BENCH_OUT      JSON file written once, when the BENCH_EXPECT-th job ends
    BENCH_WARM     file touched by a warm-up job (the client waits for it before measuring)
    BENCH_SHARED   (scale scenario) a file of one slot per worker process, mapped by every worker;
    BENCH_SLOT     this process's slot in it. BENCH_EXPECT is then the jobs of all the processes
                   together: each handler records its count and last end in its slot, and the process
                   whose job brings the sum to BENCH_EXPECT writes its BENCH_OUT. The first job of
                   each process waits (at most BARRIER_S) until every process has its first job, so
                   the processes' start-up skew is not measured.

Nothing is written per job: handlers only count, keep a timestamp or append one float to a list.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mmap
import os
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU of a whole process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # After the ')' that closes the command name: field 3 (state) is index 0, utime is 14, stime 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


# One worker process's slot in BENCH_SHARED: jobs done, last end, first start, CPU at the first start,
# ready (1 once the process has its first job). The orchestrator reads the same layout.
SLOT = struct.Struct("<qdddq")
SLOT_END = struct.Struct("<qd")  # its first two fields, written at every job's end
BARRIER_S = 10.0


class Recorder:
    """Counts job ends; remembers the first start; dumps everything when the count hits N."""

    def __init__(self) -> None:
        self.expect = int(os.environ.get("BENCH_EXPECT", "0") or 0)
        self.out = os.environ.get("BENCH_OUT", "")
        self.warm_path = os.environ.get("BENCH_WARM", "")
        self.done = 0
        self.first_start: float | None = None
        self.cpu_first = 0.0
        self.samples: list[float] = []  # start time minus due time (s), for stamp jobs
        self.ids: set[str] = set()  # job ids, kept only by drivers whose system can run a job twice
        self.dumped = False
        self.lock = threading.Lock()  # only the thread-based worker (dramatiq) uses it
        shared = os.environ.get("BENCH_SHARED", "")
        if shared:
            with open(shared, "r+b") as f:
                self.shared = mmap.mmap(f.fileno(), 0)
            self.offset = int(os.environ.get("BENCH_SLOT", "0")) * SLOT.size
            slots = len(self.shared) // SLOT.size
            self.counts = struct.Struct("<" + f"q{SLOT.size - 8}x" * slots)  # every slot's `done`
            self.readies = struct.Struct("<" + f"{SLOT.size - 8}xq" * slots)  # every slot's `ready`
            # The plugin binds RECORDER.start and .end at import: these instance attributes win.
            self.start = self.start_shared  # type: ignore[method-assign]
            self.end = self.end_shared  # type: ignore[method-assign]

    def start(self) -> None:
        if self.first_start is None:
            self.first_start = time.time()
            self.cpu_first = cpu_seconds()

    def end(self) -> None:
        self.done += 1
        if self.done == self.expect:
            self.dump()

    def start_shared(self) -> None:
        """The first job waits (blocking this process's loop) until every process has its first job."""
        if self.first_start is not None:
            return
        SLOT.pack_into(self.shared, self.offset, 0, 0.0, 0.0, 0.0, 1)
        deadline = time.monotonic() + BARRIER_S
        while not all(self.readies.unpack_from(self.shared)) and time.monotonic() < deadline:
            time.sleep(0.0005)
        self.first_start = time.time()
        self.cpu_first = cpu_seconds()
        SLOT.pack_into(self.shared, self.offset, 0, 0.0, self.first_start, self.cpu_first, 1)

    def end_shared(self) -> None:
        self.done += 1
        SLOT_END.pack_into(self.shared, self.offset, self.done, time.time())
        if sum(self.counts.unpack_from(self.shared)) >= self.expect:
            self.dump()

    def stamp(self, due: float, warm: bool = False) -> None:
        """A latency job: start minus due (client's enqueue time, plus its delay)."""
        now = time.time()
        if warm:
            if self.warm_path:
                open(self.warm_path, "a").close()
            return
        if self.first_start is None:
            self.first_start = now
            self.cpu_first = cpu_seconds()
        self.samples.append(now - due)
        self.end()

    def dump(self, final: bool = False) -> None:
        last_end = time.time()
        cpu_last = cpu_seconds()
        if not self.out or (self.dumped and not final):
            return
        self.dumped = True
        write_json(self.out + (".final" if final else ""), {
            "pid": os.getpid(), "done": self.done, "expect": self.expect,
            "first_start": self.first_start, "last_end": last_end,
            "cpu_first": self.cpu_first, "cpu_last": cpu_last, "samples": self.samples,
            **({"distinct": len(self.ids)} if self.ids else {}),
        })

    # Thread-safe variants for thread-pool workers.
    def start_locked(self) -> None:
        if self.first_start is None:
            with self.lock:
                self.start()

    def end_locked(self) -> None:
        with self.lock:
            self.end()

    def stamp_locked(self, due: float, warm: bool = False) -> None:
        with self.lock:
            self.stamp(due, warm)


RECORDER = Recorder()

SLEEP_S = 0.01  # the sleep scenario's job: asyncio.sleep(0.01)


# -- clients ------------------------------------------------------------------------------------

async def pooled(n: int, workers: int, one: Callable[[int], Awaitable[Any]]) -> float:
    """Run one(i) for i in range(n) on `workers` concurrent coroutines; returns elapsed seconds."""
    counter = iter(range(n))

    async def loop() -> None:
        for i in counter:
            await one(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(min(workers, n))))
    return time.perf_counter() - t0


async def steady(n: int, rate: float, delay: float,
                 one: Callable[[int, float, float], Awaitable[Any]]) -> dict[str, Any]:
    """Enqueue n jobs at a steady rate, each as its own task so a slow enqueue never delays the
    next one. one(i, due, delay): due is the client's clock before the call, plus the delay."""
    tasks = []
    calls: list[float] = []

    async def timed(i: int, now: float) -> None:
        await one(i, now + delay, delay)
        calls.append(time.time() - now)

    t0 = time.time()
    for i in range(n):
        target = t0 + i / rate
        wait = target - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        tasks.append(asyncio.ensure_future(timed(i, time.time())))
    await asyncio.gather(*tasks)
    return {"sent": n, "seconds": time.time() - t0, **call_summary(calls)}


def call_summary(calls: list[float]) -> dict[str, float]:
    """p50 and p99 of the client's enqueue calls (ms): a slow client shows here, not in the worker."""
    ms = sorted(c * 1000 for c in calls)
    return {"call_p50_ms": ms[len(ms) // 2], "call_p99_ms": ms[min(len(ms) - 1, int(len(ms) * 0.99))]}


async def wait_warm(path: str, send: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> None:
    """Send one warm-up job and wait until the worker ran it: the worker is then connected and idle."""
    await send()
    deadline = time.time() + timeout
    while not os.path.exists(path):
        if time.time() > deadline:
            raise SystemExit(f"the worker did not run the warm-up job within {timeout}s")
        await asyncio.sleep(0.01)


async def cancel(task: asyncio.Task[Any]) -> None:
    """Cancel a task until it is done: redis-py on Python 3.11 can swallow a cancellation that lands
    inside its connection check, so one cancel() is not always enough."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=0.1)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line every driver in bench/systems/ shares."""
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["fill", "worker", "steady", "verify"])
    p.add_argument("--redis", required=True)
    p.add_argument("--variant", default="default")
    p.add_argument("--kind", default="noop", choices=["noop", "sleep", "stamp"])
    p.add_argument("--n", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--clients", type=int, default=50, help="concurrent client coroutines for fill")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--warm", default="")
    p.add_argument("--queues", default="default", help="workqueue only: comma-separated queues, jobs round-robin")
    return p.parse_args(argv)


def emit(data: dict[str, Any]) -> None:
    """A driver's one line of JSON on stdout: what the orchestrator reads."""
    print("BENCH " + json.dumps(data), flush=True)
