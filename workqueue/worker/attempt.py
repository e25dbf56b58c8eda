"""One attempt of one job: check the payload, call the handler (on the loop, or in a thread for a
plain function), and turn what happened into an `Outcome`: succeeded, retrying after a backoff,
dead, or cancelled.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import random
import time
import traceback
from collections.abc import Awaitable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from ..config import Settings
from ..errors import PermanentError, ValidationError
from ..job import Job, JobContext, Outcome, Status
from ..logs import EventLog
from ..plugins import TaskType
from ..specs import check_payload
from .inflight import Interruption


class Attempts:
    """Runs attempts for one worker process."""

    def __init__(self, settings: Settings, tasks: Mapping[str, TaskType], log: EventLog, worker: str) -> None:
        self.settings = settings
        self.tasks = tasks
        self.log = log
        self.worker = worker
        self.executor = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="workqueue-job")

    def context(self, job: Job) -> JobContext | None:
        """The `ctx` the job's handler asked for, if it did."""
        task = self.tasks.get(job.type)
        if task is None or not task.wants_context:
            return None
        return JobContext(job.id, job.type, job.queue, job.attempts, self.settings.plugins.get(job.type, {}),
                          log=functools.partial(self.log.emit_for, job))

    async def run(self, job: Job, ctx: JobContext | None) -> Outcome:
        """One attempt. Returns its outcome; raises only when cancelled."""
        if self.log.enabled("started"):
            self.log.emit("started", job_id=job.id, type=job.type, queue=job.queue, attempt=job.attempts,
                          wait_ms=round((time.time() - job.due_at) * 1000, 1))
        task = self.tasks.get(job.type)
        if task is None:
            known = ", ".join(sorted(self.tasks)) or "none"
            error = f"unknown task type {job.type!r} at worker {self.worker} (loaded: {known})"
            return Outcome(job, Status.DEAD, error)
        try:
            # Checked again here: the job may come from an older producer, or from before a deploy.
            check_payload(task.options, job.payload, settings=self.settings.plugins.get(job.type))
            result = await self.call(task, job, ctx)
            return Outcome(job, Status.SUCCEEDED, orjson.dumps(result).decode())
        except (PermanentError, ValidationError) as e:
            return Outcome(job, Status.DEAD, describe(e), traceback=trace(e))
        except Exception as e:  # one job's failure must never stop the worker
            outcome = self.failure(job, describe(e))
            outcome.traceback = trace(e)
            return outcome

    def interrupted(self, job: Job, why: Interruption) -> Outcome:
        """The outcome of an attempt whose handler was stopped for this job alone."""
        if why is Interruption.CANCEL:
            return Outcome(job, Status.CANCELLED, "cancelled on request while running")
        return self.failure(job, f"TimeoutError: attempt exceeded its timeout of {job.timeout:g} s")

    def failure(self, job: Job, error: str) -> Outcome:
        """A failed attempt: retried after a backoff while attempts are left, else the job is dead."""
        if job.attempts > job.retries:
            return Outcome(job, Status.DEAD, error)
        return Outcome(job, Status.RETRYING, error, retry_at=time.time() + self.backoff(job.attempts))

    def call(self, task: TaskType, job: Job, ctx: JobContext | None) -> Awaitable[Any]:
        kwargs: dict[str, Any] = {"ctx": ctx} if task.wants_context else {}
        if task.is_coroutine:
            return task.handler(job.payload, **kwargs)  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        call = functools.partial(task.handler, job.payload, **kwargs)
        if self.settings.tracing:  # the thread runs in this task's context: the attempt's span is current
            call = functools.partial(contextvars.copy_context().run, call)
        return loop.run_in_executor(self.executor, call)

    def backoff(self, attempts: int) -> float:
        """Exponential with 'equal jitter': half fixed, half random, so retries of many jobs that
        failed together spread out instead of returning as a herd."""
        ceiling = min(self.settings.backoff_max, self.settings.backoff_base * 2.0 ** (attempts - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def close(self) -> None:
        # Threads still running a timed-out or abandoned handler are not waited for.
        self.executor.shutdown(wait=False, cancel_futures=True)


def describe(e: BaseException) -> str:
    """The error stored with the job and shown to clients: `Type: message`, never a file path or
    a line of the service or a plugin (those go to logs.txt, see `trace`)."""
    return f"{type(e).__name__}: {e}"[:2000]


def trace(e: BaseException) -> str:
    """The full traceback, for the job's `retrying` or `dead` line in logs.txt, where operators look."""
    return "".join(traceback.format_exception(e))[-8000:]
