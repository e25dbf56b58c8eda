"""Jobs: the state machine (`Status` and its named sets), what a client asks for (`JobSpec`), what a
worker runs (`Job`), how an attempt ends (`Outcome`) and what the store says of it (`Verdict`).

The Lua scripts use the same names: `workqueue.store.scripts` hands them `STATUS` and `VERDICT`
tables built from the enums below, and a contract test checks that no script spells a status itself.

    queued ──fetch──> active ──succeeded──> succeeded
      ^  ^               │ ──failed, attempts left──> retrying ──backoff over──> queued
      │  │               │ ──failed, none left / PermanentError──> dead ──re-drive──> queued
      │  └──promote── scheduled (delay, run_at)
      └──recover/hand-back (worker died or stopped)
    queued, scheduled, retrying, active ──cancel──> cancelled
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Any


class Status(StrEnum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    DEAD = "dead"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.SUCCEEDED, Status.DEAD, Status.CANCELLED})
"""A job in one of these never runs again (but a dead one may be re-driven)."""
WAITING = frozenset({Status.QUEUED, Status.SCHEDULED, Status.RETRYING})
"""Not running and not ended: a cancel takes it off the queue at once."""
ENDINGS = frozenset({Status.SUCCEEDED, Status.RETRYING, Status.DEAD, Status.CANCELLED})
"""What one attempt can end in: the status an `Outcome` asks for."""


class Tally(StrEnum):
    """The cluster-wide counters of a queue's stats hash: events, counted as they happen. The first
    group is kept per queue; the per task type counters ('<tally>|<type>') are the JSON view's
    `types` (succeeded, failed, retried, dead, cancelled, recovered), the outcomes that each process
    also counts for itself in workqueue_jobs_total."""

    ENQUEUED = "enqueued"
    DONE = "done"  # succeeded (the Go service's jobs_done)
    FAILED = "failed"  # per queue: jobs that ended dead; per type: failed attempts
    RETRIED = "retried"
    RECOVERED = "recovered"  # taken back from a worker that died
    RELEASED = "released"  # handed back by a worker that stopped
    CANCELLED = "cancelled"
    REDRIVEN = "redriven"
    SUCCEEDED = "succeeded"  # per type only
    DEAD = "dead"  # per type only


class Verdict(IntEnum):
    """What the store did with an attempt's outcome."""

    REFUSED = 0  # the job is no longer held through this delivery (recovered by another worker)
    RECORDED = 1
    CANCELLED = 2  # the job was cancelled meanwhile: acknowledged, the outcome discarded


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A validated request to run one job."""

    type: str
    payload: dict[str, Any]
    retries: int
    queue: str
    timeout: float
    priority: int = 0
    run_at: float | None = None  # epoch seconds; None starts at once
    key: str | None = None  # idempotency key
    key_ttl: float | None = None  # how long the key outlives the job; None: the configured default
    trace: str | None = None  # W3C trace context (traceparent[ tracestate]) to keep with the job


@dataclass(slots=True)  # not frozen: built once per job on the hot path, where frozen's __init__ costs
class Job:
    """A job as a worker received it: the record from Redis plus the delivery that carried it."""

    id: str
    delivery: str  # the stream entry id; acks name it so a stale holder's ack is refused
    type: str
    queue: str
    payload: dict[str, Any]
    retries: int
    attempts: int  # including this one
    timeout: float
    due_at: float  # when it could start: its enqueue time, or its run_at (delay, retry backoff)
    level: int = 0  # the priority stream that delivered it (requeued jobs come from the top one)
    priority: int = 0
    trace: str | None = None  # the trace context stored with the job (tracing), if any


@dataclass(slots=True)  # not frozen: one per attempt on the hot path; the worker fills in wait and run
class Outcome:
    """The end of one attempt, to be recorded by the store: `status` is one of `ENDINGS`."""

    job: Job
    status: Status
    data: str  # result JSON for SUCCEEDED, else the error text
    retry_at: float = 0.0  # epoch seconds, for RETRYING
    wait: float = 0.0  # seconds from due to the real start (not the fetch: jobs may be fetched ahead)
    run: float = 0.0  # seconds the attempt ran
    traceback: str = ""  # of a handler's exception: for logs.txt only, never stored with the job


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler that declares a `ctx` parameter is given.

    `cancelled` is set when the job is cancelled or abandoned (timeout, shutdown): a plain-function
    handler running in a thread cannot be interrupted, but it can check this and stop early.
    """

    job_id: str
    type: str
    queue: str
    attempt: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    cancelled: threading.Event = field(default_factory=threading.Event)
    # log(event, level="info", **fields) writes a line to logs.txt carrying this job's id and type.
    log: Callable[..., None] = field(default=lambda event, level="info", **fields: None)


def new_ids(n: int) -> list[str]:
    """n job ids of 32 hex digits that sort by creation time (48 bits of ms, then 80 random bits);
    one call for the random bytes of a whole batch."""
    stamp = f"{int(time.time() * 1000):012x}"
    noise = os.urandom(10 * n).hex()
    return [stamp + noise[i * 20 : i * 20 + 20] for i in range(n)]


def valid_id(job_id: str) -> bool:
    return len(job_id) == 32 and all(c in "0123456789abcdef" for c in job_id)


def rfc3339(epoch: float | None) -> str | None:
    """UTC timestamp with milliseconds, e.g. 2026-11-30T14:08:30.123Z; None stays None."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
