"""Recording outcomes: finished attempts are queued here and written in batches (one script call
per queue), kept and retried while Redis is away so that none is lost, then counted (this
process's `workqueue_jobs_total`) and logged once the store has given its verdict.

With `durability = "replica"` an outcome counts as recorded only once a replica confirmed it: an
unconfirmed batch is written again until one does. A master that still has it refuses the repeat
(its delivery is already acknowledged), so the first verdict stands; a master promoted after the
old one died without passing it on records it then.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..errors import ReplicaUnconfirmed, StoreError
from ..job import Job, Outcome, Status, Verdict
from ..logs import EventLog
from ..metrics import Metrics
from ..store import Queue
from .lifecycle import Lifecycle

# The outcome, its start and finish times, and the verdict of an earlier write no replica confirmed.
Finished = tuple[Outcome, float, float, Verdict | None]


class Recorder:
    def __init__(self, queue: Queue, log: EventLog, metrics: Metrics, lifecycle: Lifecycle) -> None:
        self.queue = queue
        self.log = log
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.outcomes: list[Finished] = []
        self.added = asyncio.Event()
        self.recording = asyncio.Lock()
        self.writing: list[Finished] = []  # the batch being written now
        self.closed = False

    def jobs(self) -> list[Job]:
        """The jobs whose outcomes are waiting to be recorded, or being recorded now."""
        return [o.job for o, _, _, _ in self.outcomes + self.writing]

    def add(self, outcome: Outcome, started: float, finished: float) -> None:
        self.outcomes.append((outcome, started, finished, None))
        self.added.set()

    async def run(self) -> None:
        """Record as outcomes come, until closed and nothing is left."""
        while True:
            await self.added.wait()
            await self.flush()
            if self.closed and not self.outcomes:
                return

    def close(self) -> None:
        """`run` records what is left, then returns."""
        self.closed = True
        self.added.set()

    async def flush(self) -> None:
        """Record every finished attempt; on a Redis outage keep them and try again, so none is lost.
        One caller at a time: whoever returns from here knows no outcome is still on its way."""
        async with self.recording:
            while self.outcomes:
                self.added.clear()
                batch, self.outcomes = self.outcomes, []
                self.writing = batch
                try:
                    verdicts = await self.queue.finish([o for o, _, _, _ in batch])
                except ReplicaUnconfirmed as e:
                    assert e.verdicts is not None
                    again = [(o, s, f, earlier or v) for (o, s, f, earlier), v in zip(batch, e.verdicts)]
                    self.outcomes = again + self.outcomes
                    await self.lifecycle.pause_after(e)
                    continue
                except StoreError as e:
                    self.outcomes = batch + self.outcomes
                    await self.lifecycle.pause_after(e)
                    continue
                finally:
                    self.writing = []
                for (outcome, started, finished, earlier), verdict in zip(batch, verdicts):
                    if earlier is not None and verdict is Verdict.REFUSED:
                        verdict = earlier  # the master had it already: the repeat was refused
                    self.recorded(outcome, started, finished, verdict)

    def recorded(self, outcome: Outcome, started: float, finished: float, verdict: Verdict) -> None:
        """Count and log an outcome the store has given its verdict on: the counts are what the store
        counted (nothing for a refused one), so summed over the fleet they are the true totals."""
        if verdict is Verdict.REFUSED:
            event, level = "stale_outcome_refused", "warning"
        elif verdict is Verdict.CANCELLED or outcome.status is Status.CANCELLED:
            event, level = "cancelled", "info"
        else:
            event, level = EVENTS[outcome.status]
        job = outcome.job
        for counted in COUNTED[event]:
            self.metrics.count_job(job.queue, job.type, counted)
        if not self.log.enabled(event, level):
            return
        fields: dict[str, Any] = {"job_id": job.id, "type": job.type, "queue": job.queue, "attempt": job.attempts,
                                  "wait_ms": round(max(0.0, started - job.due_at) * 1000, 1),
                                  "duration_ms": round((finished - started) * 1000, 1)}
        if event == "stale_outcome_refused":
            fields["error"] = "the job was recovered by another worker while this one held it"
        elif event == "retrying":
            fields["error"] = outcome.data
            fields["retry_in_ms"] = round((outcome.retry_at - finished) * 1000)
        elif event == "dead":
            fields["error"] = outcome.data
        if outcome.traceback and event in ("retrying", "dead"):
            fields["traceback"] = outcome.traceback
        self.log.emit(event, level, **fields)


# The log event (and its level) of each recorded outcome.
EVENTS = {
    Status.SUCCEEDED: ("succeeded", "info"),
    Status.RETRYING: ("retrying", "warning"),
    Status.DEAD: ("dead", "error"),
    Status.CANCELLED: ("cancelled", "info"),
}
# What each of those events counts in workqueue_jobs_total (`outcome`), as the finish script counts
# it in Redis: a failed attempt is `failed`, and `retried` or `dead` besides.
COUNTED = {
    "succeeded": ("succeeded",),
    "retrying": ("failed", "retried"),
    "dead": ("failed", "dead"),
    "cancelled": ("cancelled",),
    "stale_outcome_refused": (),
}
