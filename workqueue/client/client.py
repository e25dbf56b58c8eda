"""`Client` (blocking) and `AsyncClient` (awaitable): the HTTP API as Python methods.

Both carry out the operations of `operations.py`, which decide what to send, when to retry and how
to read the answer; the two classes only send and sleep, one with `httpx.Client` and `time.sleep`,
the other with `httpx.AsyncClient` and `asyncio.sleep`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import httpx

from .operations import DEFAULT_URL, Operation, Operations, Reply, Sleep
from .results import Cancellation, Enqueued, Job, Page, QueueInfo, Worker

T = TypeVar("T")


class Client:
    """The blocking client. `with Client(url, token=..., timeout=..., retries=...) as client: ...`

    `timeout` bounds each request (seconds); connection failures and 503 answers are tried again up
    to `retries` times with a jittered exponential backoff, or after the answer's Retry-After.
    Errors: `workqueue.APIError` for an answer that refuses (`.status`, `.message`),
    `workqueue.ServiceUnreachable` when no answer came.
    """

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 10.0,
                 retries: int = 3) -> None:
        self._operations = Operations(url, token, timeout, retries)
        self._http = httpx.Client()

    @property
    def url(self) -> str:
        return self._operations.url

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections this client keeps open."""
        self._http.close()

    def _run(self, operation: Operation[T]) -> T:
        try:
            step = next(operation)
            while True:
                reply: Reply = None
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                else:
                    try:
                        reply = self._http.send(step.request)
                    except httpx.TransportError as e:
                        reply = e
                step = operation.send(reply)
        except StopIteration as done:
            return cast(T, done.value)
        finally:
            operation.close()

    def enqueue(self, type: str, payload: Mapping[str, Any], *, queue: str | None = "default",
                delay: float | None = None, key: str | None = None, retries: int | None = None,
                priority: int | None = None, group: str | None = None,
                depends_on: Iterable[str] | None = None) -> Enqueued:
        """Enqueue one job. Without `key`, a generated idempotency key guards the retries."""
        return self._run(self._operations.enqueue(type, payload, queue=queue, delay=delay, key=key, retries=retries,
                                                  priority=priority, group=group, depends_on=depends_on))

    def enqueue_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[Enqueued]:
        """Enqueue job objects (as POST /enqueue takes them) in one request: all of them or none."""
        return self._run(self._operations.enqueue_many(jobs))

    def get(self, job_id: str) -> Job:
        """The job's state now."""
        return self._run(self._operations.get(job_id))

    def wait(self, job_id: str, timeout: float = 30.0) -> Job:
        """The job once it has ended (succeeded, dead, cancelled, expired); TimeoutError after `timeout` s."""
        return self._run(self._operations.wait(job_id, timeout))

    def cancel(self, job_id: str) -> Cancellation:
        """Cancel a job that has not ended; APIError 409 if it has."""
        return self._run(self._operations.cancel(job_id))

    def jobs(self, queue: str = "default", status: str = "queued", type: str | None = None, limit: int = 50,
             cursor: str | None = None) -> Page:
        """One page of a queue's jobs in one status; pass `page.next_cursor` as `cursor` for the next."""
        return self._run(self._operations.jobs(queue, status, type, limit, cursor))

    def dead(self, queue: str | None = None, type: str | None = None, limit: int = 50,
             cursor: str | None = None) -> Page:
        """One page of dead jobs, most recent first."""
        return self._run(self._operations.dead(queue, type, limit, cursor))

    def retry_dead(self, job_id: str | None = None, *, queue: str | None = None, type: str | None = None,
                   limit: int | None = None) -> list[str]:
        """Re-drive one dead job, or (no id) those matching queue/type, up to `limit`; the ids re-driven."""
        return self._run(self._operations.retry_dead(job_id, queue, type, limit))

    def delete_dead(self, job_id: str) -> None:
        """Drop a dead job."""
        self._run(self._operations.delete_dead(job_id))

    def queues(self) -> list[QueueInfo]:
        """Every queue ever used, with its jobs by status."""
        return self._run(self._operations.queues())

    def pause(self, queue: str) -> None:
        """Stop workers from starting the queue's jobs (it still accepts them)."""
        self._run(self._operations.pause(queue, True))

    def resume(self, queue: str) -> None:
        """Let workers start the queue's jobs again."""
        self._run(self._operations.pause(queue, False))

    def workers(self) -> list[Worker]:
        """The live worker processes."""
        return self._run(self._operations.workers())

    def metrics(self) -> dict[str, Any]:
        """GET /metrics as JSON: the counts of every queue and the service-wide totals."""
        return self._run(self._operations.metrics())


class AsyncClient:
    """The asyncio client: the methods of `Client`, awaited. `async with AsyncClient(url) as client: ...`"""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, timeout: float = 10.0,
                 retries: int = 3) -> None:
        self._operations = Operations(url, token, timeout, retries)
        self._http = httpx.AsyncClient()

    @property
    def url(self) -> str:
        return self._operations.url

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections this client keeps open."""
        await self._http.aclose()

    async def _run(self, operation: Operation[T]) -> T:
        try:
            step = next(operation)
            while True:
                reply: Reply = None
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                else:
                    try:
                        reply = await self._http.send(step.request)
                    except httpx.TransportError as e:
                        reply = e
                step = operation.send(reply)
        except StopIteration as done:
            return cast(T, done.value)
        finally:
            operation.close()  # also when the awaiting task is cancelled mid-way

    async def enqueue(self, type: str, payload: Mapping[str, Any], *, queue: str | None = "default",
                      delay: float | None = None, key: str | None = None, retries: int | None = None,
                      priority: int | None = None, group: str | None = None,
                      depends_on: Iterable[str] | None = None) -> Enqueued:
        """Enqueue one job. Without `key`, a generated idempotency key guards the retries."""
        return await self._run(self._operations.enqueue(
            type, payload, queue=queue, delay=delay, key=key, retries=retries, priority=priority, group=group,
            depends_on=depends_on))

    async def enqueue_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[Enqueued]:
        """Enqueue job objects (as POST /enqueue takes them) in one request: all of them or none."""
        return await self._run(self._operations.enqueue_many(jobs))

    async def get(self, job_id: str) -> Job:
        """The job's state now."""
        return await self._run(self._operations.get(job_id))

    async def wait(self, job_id: str, timeout: float = 30.0) -> Job:
        """The job once it has ended (succeeded, dead, cancelled, expired); TimeoutError after `timeout` s."""
        return await self._run(self._operations.wait(job_id, timeout))

    async def cancel(self, job_id: str) -> Cancellation:
        """Cancel a job that has not ended; APIError 409 if it has."""
        return await self._run(self._operations.cancel(job_id))

    async def jobs(self, queue: str = "default", status: str = "queued", type: str | None = None, limit: int = 50,
                   cursor: str | None = None) -> Page:
        """One page of a queue's jobs in one status; pass `page.next_cursor` as `cursor` for the next."""
        return await self._run(self._operations.jobs(queue, status, type, limit, cursor))

    async def dead(self, queue: str | None = None, type: str | None = None, limit: int = 50,
                   cursor: str | None = None) -> Page:
        """One page of dead jobs, most recent first."""
        return await self._run(self._operations.dead(queue, type, limit, cursor))

    async def retry_dead(self, job_id: str | None = None, *, queue: str | None = None, type: str | None = None,
                         limit: int | None = None) -> list[str]:
        """Re-drive one dead job, or (no id) those matching queue/type, up to `limit`; the ids re-driven."""
        return await self._run(self._operations.retry_dead(job_id, queue, type, limit))

    async def delete_dead(self, job_id: str) -> None:
        """Drop a dead job."""
        await self._run(self._operations.delete_dead(job_id))

    async def queues(self) -> list[QueueInfo]:
        """Every queue ever used, with its jobs by status."""
        return await self._run(self._operations.queues())

    async def pause(self, queue: str) -> None:
        """Stop workers from starting the queue's jobs (it still accepts them)."""
        await self._run(self._operations.pause(queue, True))

    async def resume(self, queue: str) -> None:
        """Let workers start the queue's jobs again."""
        await self._run(self._operations.pause(queue, False))

    async def workers(self) -> list[Worker]:
        """The live worker processes."""
        return await self._run(self._operations.workers())

    async def metrics(self) -> dict[str, Any]:
        """GET /metrics as JSON: the counts of every queue and the service-wide totals."""
        return await self._run(self._operations.metrics())
