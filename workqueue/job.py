"""Jobs: their states, what a client may ask for (`JobSpec`), and what a worker runs (`Job`).

Request validation lives here so the HTTP layer and any future client share one definition of a
valid job. Field names are matched case-insensitively, as the Go service's JSON decoding did.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from .errors import ValidationError
from .task import TaskOptions, check_payload


class Status(str, Enum):
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    SUCCEEDED = "succeeded"
    RETRYING = "retrying"
    DEAD = "dead"
    CANCELLED = "cancelled"


TERMINAL = frozenset({Status.SUCCEEDED, Status.DEAD, Status.CANCELLED})

# The fields a request may carry, lower-cased. Anything else is refused so a typo ("retires")
# is reported instead of silently falling back to a default.
REQUEST_FIELDS = frozenset({"type", "payload", "retries", "queue", "timeout", "priority", "delay", "run_at", "key"})
MAX_TIMEOUT = 7 * 24 * 3600.0
MAX_RETRIES = 1000
MAX_DELAY = 366 * 24 * 3600.0
MAX_PRIORITY = 9
MAX_KEY_LENGTH = 256


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


def parse_specs(
    body: Any,
    known_types: Mapping[str, TaskOptions],
    default_retries: int,
    default_timeout: float,
    is_queue_name: Callable[[str], bool],
    header_key: str | None = None,
    plugin_settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[JobSpec]:
    """Validate a decoded request body: one job object or a non-empty array of them.

    `header_key` is the Idempotency-Key header, the same thing as a single job's `key` field.
    Raises ValidationError naming the field (and the index, for arrays); nothing is partially valid.
    """

    def one(item: Any, where: str) -> JobSpec:
        return parse_spec(item, where, known_types, default_retries, default_timeout, is_queue_name,
                          plugin_settings or {})

    if isinstance(body, list):
        if not body:
            raise ValidationError("body: expected a job object or a non-empty array of them", 422)
        if header_key is not None:
            raise ValidationError("Idempotency-Key: applies to a single job; give each job of an array its own key", 422)
        return [one(item, f"[{i}].") for i, item in enumerate(body)]
    spec = one(body, "")
    if header_key is not None:
        key = check_key(header_key, "Idempotency-Key")
        if spec.key is not None and spec.key != key:
            raise ValidationError("key: differs from the Idempotency-Key header", 422)
        spec = replace(spec, key=key)
    return [spec]


def parse_spec(
    item: Any,
    where: str,
    known_types: Mapping[str, TaskOptions],
    default_retries: int,
    default_timeout: float,
    is_queue_name: Callable[[str], bool],
    plugin_settings: Mapping[str, Mapping[str, Any]],
) -> JobSpec:
    def fail(name: str, expected: str, status: int = 422) -> ValidationError:
        return ValidationError(f"{where}{name}: {expected}", status)

    if not isinstance(item, dict):
        raise fail("body" if not where else "job", "expected a JSON object with type and payload", 400)
    fields: dict[str, Any] = {}
    for key, value in item.items():
        name = key.lower()
        if name not in REQUEST_FIELDS:
            raise fail(key, f"unknown field (expected {', '.join(sorted(REQUEST_FIELDS))})")
        if name in fields:
            raise fail(key, "given twice (field names are case-insensitive)")
        fields[name] = value

    task_type = fields.get("type")
    if task_type is None:
        raise fail("type", "required (the task type to run)")
    if not isinstance(task_type, str) or not task_type:
        raise fail("type", "expected a non-empty string")
    if task_type not in known_types:
        known = ", ".join(sorted(known_types)) or "none loaded"
        raise fail("type", f"unknown task type {task_type[:100]!r} (known: {known})")

    if "payload" not in fields:
        raise fail("payload", "required (a JSON object, may be empty)")
    payload = fields["payload"]
    if not isinstance(payload, dict):
        raise fail("payload", "expected a JSON object")

    options = known_types[task_type]
    check_payload(options, payload, f"{where}payload", plugin_settings.get(task_type))

    retries = fields.get("retries", default_retries if options.retries is None else options.retries)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= MAX_RETRIES:
        raise fail("retries", f"expected an integer from 0 to {MAX_RETRIES}")

    queue = fields.get("queue", "default")
    if not isinstance(queue, str) or not is_queue_name(queue):
        raise fail("queue", "expected a queue name of letters, digits, '_', '-' or '.' (1-64 characters)")

    timeout = fields.get("timeout", default_timeout if options.timeout is None else options.timeout)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or not 0 < timeout <= MAX_TIMEOUT
    ):
        raise fail("timeout", f"expected a number of seconds > 0 and <= {MAX_TIMEOUT:.0f}")

    priority = fields.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= MAX_PRIORITY:
        raise fail("priority", f"expected an integer from 0 to {MAX_PRIORITY} (higher runs first)")

    run_at = None
    if "delay" in fields and "run_at" in fields:
        raise fail("delay", "give either delay or run_at, not both")
    if "delay" in fields:
        delay = fields["delay"]
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not 0 <= delay <= MAX_DELAY:
            raise fail("delay", f"expected a number of seconds from 0 to {MAX_DELAY:.0f}")
        run_at = time.time() + delay
    elif "run_at" in fields:
        run_at = parse_time(fields["run_at"])
        if run_at is None or run_at > time.time() + MAX_DELAY:
            raise fail("run_at", "expected an RFC 3339 time with a UTC offset (2026-12-01T09:00:00Z) "
                       "or epoch seconds, at most a year ahead")

    key = fields.get("key")
    if key is not None:
        key = check_key(key, where + "key")

    return JobSpec(type=task_type, payload=payload, retries=retries, queue=queue, timeout=float(timeout),
                   priority=priority, run_at=run_at, key=key)


def check_key(key: Any, name: str) -> str:
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
        raise ValidationError(f"{name}: expected an idempotency key of 1 to {MAX_KEY_LENGTH} characters", 422)
    return key


def parse_time(value: Any) -> float | None:
    """Epoch seconds from an RFC 3339 string with an offset, or from a number; None if neither."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) and value >= 0 else None
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return None
        if moment.tzinfo is None:
            return None
        return moment.timestamp()
    return None


def rfc3339(epoch: float | None) -> str | None:
    """UTC timestamp with milliseconds, e.g. 2026-11-30T14:08:30.123Z; None stays None."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
