"""Task types for the test suite's worker processes.

`record` appends a line to a ledger file outside Redis, so tests can count how many times each job
really ran (the oracle for "lost" and "run twice").
"""

import asyncio
import os
import time


async def echo(payload):
    return payload


async def sleep(payload, ctx):
    await asyncio.sleep(float(payload.get("seconds", 0.1)))
    record_run(payload, ctx)
    return {"slept": payload.get("seconds", 0.1)}


async def fail(payload):
    raise RuntimeError(payload.get("message", "failed on purpose"))


async def flaky(payload, ctx):
    """Fails until attempt `succeed_on`."""
    if ctx.attempt < int(payload.get("succeed_on", 2)):
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


async def record(payload, ctx):
    record_run(payload, ctx)
    return {"recorded": ctx.job_id}


def block(payload, ctx):
    """A plain function: the worker runs it in a thread."""
    time.sleep(float(payload.get("seconds", 0.1)))
    record_run(payload, ctx)
    return {"thread": True}


def record_run(payload, ctx):
    ledger = payload.get("ledger")
    if ledger:
        # O_APPEND writes of one short line are atomic, so concurrent jobs never interleave.
        fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ctx.job_id} {ctx.attempt} {os.getpid()} {time.time():.3f}\n".encode())
        finally:
            os.close(fd)


# -- task types for tests/e2e/test_reliability.py (fault injection) ----------------------------------


async def wait_for_go(payload):
    """Wait until the file payload["go"] exists (if given): the test says when a fault may begin."""
    go = payload.get("go")
    while go and not os.path.exists(go):
        await asyncio.sleep(0.01)


async def nap(payload, ctx):
    """Like `sleep` (waits on the loop, then records), after `go`; the result names the process."""
    await wait_for_go(payload)
    await asyncio.sleep(float(payload.get("seconds", 0.1)))
    record_run(payload, ctx)
    return {"pid": os.getpid(), "attempt": ctx.attempt}


def nap_thread(payload, ctx):
    """A plain function (run in a thread, so it cannot be interrupted); the result names the process."""
    time.sleep(float(payload.get("seconds", 0.1)))
    record_run(payload, ctx)
    return {"pid": os.getpid(), "attempt": ctx.attempt, "cancelled_flag": ctx.cancelled.is_set()}


async def hog(payload, ctx):
    """The classic plugin bug: time.sleep() inside an `async def`, which blocks the event loop."""
    await wait_for_go(payload)
    time.sleep(float(payload.get("seconds", 1.0)))
    record_run(payload, ctx)
    return {"pid": os.getpid(), "attempt": ctx.attempt}


async def crash(payload, ctx):
    """Kills its own worker process (as a segfaulting extension or the OOM killer would), after
    writing one ledger line per attempt that started."""
    record_run(payload, ctx)
    os._exit(int(payload.get("code", 1)))


# -- a task type for tests/test_tracing.py ------------------------------------------------------------


async def traced(payload, ctx):
    """Makes a span of its own with the OpenTelemetry API (as a plugin would), then fails until attempt
    `succeed_on`."""
    from opentelemetry import trace

    with trace.get_tracer("wq_testtasks").start_as_current_span("testtasks.traced") as span:
        span.set_attribute("testtasks.attempt", ctx.attempt)
        await asyncio.sleep(0)
    if ctx.attempt < int(payload.get("succeed_on", 1)):
        raise RuntimeError(f"traced failure on attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}
