"""Dramatiq's benchmark driver with its Redis broker (runs in bench/.venvs/dramatiq).

The worker is dramatiq.Worker in this process with `concurrency` threads, which is what each
`dramatiq` CLI worker process runs, so one process is measured. Handlers are plain functions
(Dramatiq runs them on threads); the sleep job is time.sleep(0.01). Delays: send_with_options(delay).
Dramatiq has no pipelined or batched enqueue: its fastest client path is send() from several threads.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dramatiq
from benchlib import RECORDER, SLEEP_S, call_summary, emit, parse
from dramatiq.brokers.redis import RedisBroker

args = parse()
broker = RedisBroker(url=args.redis)
dramatiq.set_broker(broker)
_start, _end = RECORDER.start_locked, RECORDER.end_locked


@dramatiq.actor(actor_name="noop")
def noop(i):
    _start()
    _end()


@dramatiq.actor(actor_name="sleep")
def sleep(i):
    _start()
    time.sleep(SLEEP_S)
    _end()


@dramatiq.actor(actor_name="stamp")
def stamp(i, due, warm=False):
    RECORDER.stamp_locked(due, warm)


ACTORS = {"noop": noop, "sleep": sleep, "stamp": stamp}
NS = "dramatiq"


def main() -> None:
    if args.command == "worker":
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        worker = dramatiq.Worker(broker, worker_threads=args.concurrency)
        worker.start()
        stop.wait()
        worker.stop()
        RECORDER.dump(final=True)
        broker.close()
        return
    if args.command == "fill":
        actor = ACTORS[args.kind]
        counter = iter(range(args.n))
        lock = threading.Lock()

        def loop() -> None:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                actor.send(i)

        threads = max(1, args.clients)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(loop) for _ in range(threads)]:
                f.result()
        emit({"n": args.n, "seconds": time.perf_counter() - t0})
    elif args.command == "steady":
        stamp.send(-1, time.time(), True)
        deadline = time.time() + 60
        while not Path(args.warm).exists():
            if time.time() > deadline:
                raise SystemExit("the worker did not run the warm-up job within 60s")
            time.sleep(0.01)
        t0 = time.time()
        calls = []
        for i in range(args.n):
            wait = t0 + i / args.rate - time.time()
            if wait > 0:
                time.sleep(wait)
            now = time.time()
            if args.delay:
                stamp.send_with_options(args=(i, now + args.delay), delay=int(args.delay * 1000))
            else:
                stamp.send(i, now)
            calls.append(time.time() - now)
        emit({"sent": args.n, "seconds": time.time() - t0, **call_summary(calls)})
    elif args.command == "verify":
        r = broker.client
        left = {
            "queued": r.llen(f"{NS}:default"), "messages": r.hlen(f"{NS}:default.msgs"),
            "delayed_queued": r.llen(f"{NS}:default.DQ"), "delayed_messages": r.hlen(f"{NS}:default.DQ.msgs"),
            "dead": r.hlen(f"{NS}:default.XQ.msgs"),
            "unacked": sum(r.scard(k) for k in r.scan_iter(f"{NS}:__acks__.*")),
        }
        emit({"ok": not any(left.values()), **left})
    broker.close()


if __name__ == "__main__":
    main()
