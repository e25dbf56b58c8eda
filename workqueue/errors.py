"""The exceptions workqueue raises, as one small tree.

    WorkqueueError
    ├── ConfigError         bad or unknown setting; start-up stops (exit 2)
    ├── PluginError         a plugin failed to load or clashes with another; start-up stops
    ├── ValidationError     a request or job is malformed; HTTP 400/413/415/422, nothing enqueued
    ├── PermanentError      raised by a handler: the job fails now, without retrying
    ├── StoreError          Redis answered with an error workqueue did not expect; HTTP 500
    │   └── StoreUnavailable  Redis cannot be reached right now; HTTP 503 with Retry-After
    │       ├── StoreOutOfMemory    Redis is at its maxmemory and refused the write whole
    │       └── ReplicaUnconfirmed  durability = "replica" and no replica confirmed a write in time
    ├── QueueFull           the queue is at its max_length; HTTP 503 with Retry-After
    ├── APIError            the client: the service answered an error (`status`, `message`)
    └── ServiceUnreachable  the client: no answer from the service, after its retries

Redis errors become StoreError or StoreUnavailable at one boundary, the store (`workqueue.store`):
no other module sees a redis-py exception. HTTP errors become APIError or ServiceUnreachable at one
boundary too, the client's `operations` module: no caller of the client sees an httpx exception.
"""

from __future__ import annotations

from typing import Any


class WorkqueueError(Exception):
    """Base of every error workqueue raises on purpose."""


class ConfigError(WorkqueueError):
    """A setting is unknown or has a bad value; the message names the key."""


class PluginError(WorkqueueError):
    """A plugin could not be found, imported or registered; the message names it and its source."""


class ValidationError(WorkqueueError):
    """Client input is wrong; `status` is the HTTP status it maps to."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class StoreError(WorkqueueError):
    """Redis refused a command in a way no retry fixes by itself (a bug, or a misconfigured Redis)."""


class StoreUnavailable(StoreError):
    """Redis did not answer; the operation had no effect and may be retried."""


class StoreOutOfMemory(StoreUnavailable):
    """Redis reached its `maxmemory` and refused a write; nothing of it was done (every script is
    refused whole, never run half-way). It passes once jobs finish and their records expire, or
    when Redis is given more memory."""


class ReplicaUnconfirmed(StoreUnavailable):
    """With `durability = "replica"`: the master took the write but no replica confirmed it in time,
    so a failover could still lose it. It may exist: retry with the same Idempotency-Key.
    `verdicts` is what the store said of each outcome, when the write recorded outcomes."""

    def __init__(self, message: str, verdicts: list[Any] | None = None) -> None:
        super().__init__(message)
        self.verdicts = verdicts


class QueueFull(WorkqueueError):
    """A queue is at its configured maximum length; nothing was enqueued."""


class PermanentError(WorkqueueError):
    """Raise from a handler when retrying cannot help (bad input, a refused recipient): the job is
    dead at once, keeping this message as its error."""


class APIError(WorkqueueError):
    """The service refused or failed a request: `status` is the HTTP status, `message` the answer's
    `error` field (which names the field at fault). Raised by `Client` and `AsyncClient` at once for
    every 4xx and 5xx but a 503, and for a 503 once the retries are spent."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class ServiceUnreachable(WorkqueueError):
    """The client got no answer from the service (connection refused or reset, no answer within its
    timeout) on any of its tries. The cause (`__cause__`) is the last httpx error."""
