"""Profile workqueue's worker while it drains queued no-op jobs, with py-spy (sampling, no code changes).

    python -m bench.profile_worker [--jobs 150000] [--seconds 8] [--rate 200]

Starts its own redis-server (like the benchmark), fills the queue with the in-process client, starts
the real `python -m workqueue --role worker --concurrency 100` (quiet logging, plugin bench/plugins),
attaches py-spy to it for --seconds while it drains, and prints where the event loop's time goes:
by function (self time) and by workqueue function (inclusive). py-spy comes from the bench's own
`tools` virtualenv (bench/requirements/tools.txt), created on first use. The raw stacks are left in
bench/.work/profile/worker.raw (flamegraph.pl or speedscope can draw them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import (
    BENCH,
    SYSTEMS,
    WORK,
    Bench,
    BenchError,
    Config,
    run_json,
    setup_envs,
    stop,
    stop_all,
)

PREFIXES = ("/site-packages/", "/lib/python3.11/")


def short(frame: str) -> str:
    for marker in PREFIXES:
        if marker in frame:
            head, _, rest = frame.partition(" (")
            path = rest.split(marker, 1)[-1]
            return f"{head} ({path}"
    return frame.replace(str(BENCH.parent) + "/", "")


def function(frame: str) -> str:
    """'Worker.run (workqueue/worker.py:306)' -> 'Worker.run (workqueue/worker.py)'."""
    head, _, where = frame.partition(" (")
    return f"{head} ({where.rsplit(':', 1)[0]})" if where else head


def summarise(raw: Path, top: int = 30) -> str:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    loop_total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [function(short(f)) for f in stack.split(";")]
        if not any("_run_once" in f for f in frames):
            continue  # threads other than the event loop (idle executor threads, the heartbeat thread)
        n = int(count)
        loop_total += n
        own[frames[-1]] += n
        for f in set(frames):
            if "workqueue/" in f and "__main__" not in f:
                inclusive[f] += n
    out = [f"event-loop samples: {loop_total}", "", "self time by function:"]
    out += [f"  {100 * n / loop_total:5.1f}%  {f}" for f, n in own.most_common(top)]
    out += ["", "inclusive time by workqueue function:"]
    out += [f"  {100 * n / loop_total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_worker", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=150_000)
    p.add_argument("--seconds", type=float, default=8.0, help="how long py-spy samples")
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--concurrency", type=int, default=100)
    args = p.parse_args()
    directory = WORK / "profile"
    directory.mkdir(parents=True, exist_ok=True)
    try:
        envs = setup_envs(["workqueue", "tools"], None)
        py_spy = envs["tools"].python.parent / "py-spy"
        cfg = Config(args.jobs, 1, args.concurrency, 0, 0, 500.0, 0, 1.0, 0, 64, 0, False)
        wq = next(s for s in SYSTEMS if s.key == "workqueue")
        bench = Bench(cfg, envs, [wq], [])
        bench.start_redis()
        fill = run_json(bench.driver(wq, "fill", "--kind", "noop", "--n", str(args.jobs), "--clients", "2"),
                        "fill", 600, directory / "fill.log")
        print(f"queued {args.jobs:,} jobs at {args.jobs / fill['seconds']:,.0f}/s", file=sys.stderr)
        out = directory / "drain.json"
        proc, _ = bench.start_worker(wq, "profile", args.jobs, out, None)
        raw = directory / "worker.raw"
        spy = subprocess.run([str(py_spy), "record", "--pid", str(proc.pid), "-r", str(args.rate), "-d",
                              f"{args.seconds:g}", "--format", "raw", "-o", str(raw)],
                             capture_output=True, text=True)
        if spy.returncode != 0:
            raise BenchError(f"py-spy failed:\n{spy.stdout}{spy.stderr}")
        deadline = time.monotonic() + 300
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        stop(proc)
        if out.exists():
            stamps = json.loads(out.read_text())
            rate = args.jobs / (stamps["last_end"] - stamps["first_start"])
            print(f"drained at {rate:,.0f} jobs/s under py-spy ({args.rate} samples/s)", file=sys.stderr)
        text = summarise(raw)
        (directory / "summary.txt").write_text(text + "\n")
        print(text)
        print(f"\nraw stacks: {raw}", file=sys.stderr)
    except BenchError as e:
        print(f"PROFILE ABORTED: {e}", file=sys.stderr)
        return 1
    finally:
        stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
