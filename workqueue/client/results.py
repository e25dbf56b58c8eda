"""What the client's methods return: small frozen dataclasses read from the API's JSON answers.

Each keeps the whole answer as `raw`, so a field the service adds later is there before this module
names it. Timestamps become timezone-aware `datetime`s in UTC (None until they happen).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

TERMINAL = frozenset({"succeeded", "dead", "cancelled", "expired"})
"""The statuses a job never leaves by itself (a dead one may be re-driven). The same set as the
service's `workqueue.job.TERMINAL`, written out because the client imports nothing of the service
(tests/client/test_client.py checks that the two agree)."""


def timestamp(value: Any) -> datetime | None:
    """An RFC 3339 time of the API (`2026-11-30T14:13:18.262Z`) as an aware datetime in UTC."""
    if value is None:
        return None
    moment = datetime.fromisoformat(str(value))
    if moment.tzinfo is None:  # the API always sends an offset; a bare time is taken as UTC
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Job:
    """A job as `GET /jobs/{id}` shows it."""

    id: str
    type: str
    queue: str
    status: str
    attempts: int
    retries: int
    priority: int
    enqueued_at: datetime | None
    run_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    payload: dict[str, Any]
    result: Any
    error: str | None
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def finished(self) -> bool:
        """True once the job has ended: succeeded, dead, cancelled or expired."""
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Job:
        return cls(
            id=str(data["id"]),
            type=str(data["type"]),
            queue=str(data["queue"]),
            status=str(data["status"]),
            attempts=int(data.get("attempts", 0)),
            retries=int(data.get("retries", 0)),
            priority=int(data.get("priority", 0)),
            enqueued_at=timestamp(data.get("enqueued_at")),
            run_at=timestamp(data.get("run_at")),
            started_at=timestamp(data.get("started_at")),
            finished_at=timestamp(data.get("finished_at")),
            payload=dict(data.get("payload") or {}),
            result=data.get("result"),
            error=data.get("error"),
            raw=dict(data),
        )


@dataclass(frozen=True, slots=True)
class Enqueued:
    """What `POST /enqueue` answers for one job: its id and first status. `duplicate` is True when
    the idempotency key already named a job, which is the one returned (nothing new was created)."""

    id: str
    status: str
    type: str
    queue: str
    duplicate: bool
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Enqueued:
        return cls(id=str(data["id"]), status=str(data["status"]), type=str(data["type"]),
                   queue=str(data["queue"]), duplicate=bool(data.get("duplicate", False)), raw=dict(data))


@dataclass(frozen=True, slots=True)
class Cancellation:
    """What cancelling a job did: its status now (`cancelled`) and the one it had before."""

    id: str
    status: str
    previous_status: str

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Cancellation:
        return cls(id=str(data["id"]), status=str(data["status"]), previous_status=str(data["previous_status"]))


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing (`jobs`, `dead`); pass `next_cursor` back for the next one (None: no more)."""

    jobs: tuple[Job, ...]
    next_cursor: str | None

    def __iter__(self) -> Iterator[Job]:
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Page:
        cursor = data.get("next_cursor")
        return cls(jobs=tuple(Job.from_json(j) for j in data["jobs"]),
                   next_cursor=None if cursor is None else str(cursor))


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """One queue as `GET /queues` shows it: paused or not, and its jobs by status."""

    name: str
    paused: bool
    queued: int
    scheduled: int
    active: int
    blocked: int
    dead: int
    limits: tuple[dict[str, Any], ...]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> QueueInfo:
        return cls(
            name=str(data["name"]),
            paused=bool(data.get("paused", False)),
            queued=int(data.get("queued", 0)),
            scheduled=int(data.get("scheduled", 0)),
            active=int(data.get("active", 0)),
            blocked=int(data.get("blocked", 0)),
            dead=int(data.get("dead", 0)),
            limits=tuple(dict(limit) for limit in data.get("limits") or ()),
            raw=dict(data),
        )


@dataclass(frozen=True, slots=True)
class Worker:
    """A live worker process, from `GET /workers` (its heartbeat)."""

    name: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    in_flight: int
    started_at: datetime | None
    last_heartbeat: datetime | None
    lease: float
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Worker:
        return cls(
            name=str(data["name"]),
            host=str(data.get("host", "")),
            pid=int(data.get("pid", 0)),
            queues=tuple(str(q) for q in data.get("queues") or ()),
            concurrency=int(data.get("concurrency", 0)),
            in_flight=int(data.get("in_flight", 0)),
            started_at=timestamp(data.get("started_at")),
            last_heartbeat=timestamp(data.get("last_heartbeat")),
            lease=float(data.get("lease", 0.0)),
            raw=dict(data),
        )
