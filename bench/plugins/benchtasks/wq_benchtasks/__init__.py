"""The benchmark's task types for the real `python -m workqueue` worker (drop-in plugin).

They do what the peers' handlers in bench/systems/ do, through the same recorder (bench/benchlib.py):
count, keep the first start, and write one JSON file when the N-th job ends (BENCH_EXPECT, BENCH_OUT).
No ctx parameter, so the worker builds no per-job context for them.
"""

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # bench/, for benchlib

from benchlib import RECORDER, SLEEP_S

_start = RECORDER.start
_end = RECORDER.end


async def noop(payload):
    _start()
    _end()


async def sleep(payload):
    _start()
    await asyncio.sleep(SLEEP_S)
    _end()


async def stamp(payload):
    RECORDER.stamp(payload["due"], payload.get("warm", False))
