"""Periodic jobs: the `[[schedule]]` entries of the configuration and their tick instants.

Ticks are multiples of `every` since the epoch, or the cron expression's times in UTC, so every
worker process computes the same instants; `worker.upkeep` enqueues each tick's job once across
all of them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from croniter import croniter

from . import specs
from .errors import ConfigError, ValidationError
from .job import JobSpec

if TYPE_CHECKING:
    from .task import TaskOptions

FIELDS = frozenset({"name", "type", "payload", "cron", "every", "queue", "retries", "timeout", "priority", "missed"})
MISSED = ("skip", "once")


@dataclass(frozen=True, slots=True)
class Schedule:
    name: str
    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    every: float | None = None
    cron: str | None = None
    queue: str = "default"
    retries: int | None = None
    timeout: float | None = None
    priority: int = 0
    missed: str = "skip"  # or "once"

    def next_tick(self, after: float) -> float:
        """The first tick strictly after `after`."""
        if self.every is not None:
            return (math.floor(after / self.every) + 1) * self.every
        return float(croniter(self.cron, after).get_next(float))

    def previous_tick(self, at: float) -> float:
        """The last tick at or before `at`."""
        if self.every is not None:
            return math.floor(at / self.every) * self.every
        # Cron ticks fall on whole seconds, and get_prev from a whole second is strictly before it.
        return float(croniter(self.cron, math.floor(at) + 1).get_prev(float))

    @property
    def period(self) -> float:
        if self.every is not None:
            return self.every
        first = self.next_tick(time.time())
        return self.next_tick(first) - first


def every(value: Any) -> float:
    if not specs.is_number(value) or not value > 0:
        raise specs.FieldError("expected a number of seconds > 0")
    return float(value)


def cron(value: Any) -> str:
    if not isinstance(value, str) or not croniter.is_valid(value):
        raise specs.FieldError("expected a cron expression such as '*/5 * * * *' (UTC)")
    return value


def missed(value: Any) -> str:
    if value not in MISSED:
        raise specs.FieldError("expected 'skip' or 'once'")
    return str(value)


def name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise specs.FieldError("expected a non-empty string")
    return value


# Each key with its checker: the job fields use the same ones as a request does.
CHECKS: dict[str, Callable[[Any], Any]] = {
    "name": name, "type": specs.task_type, "payload": specs.payload, "every": every, "cron": cron,
    "queue": specs.queue, "retries": specs.retries, "timeout": specs.timeout, "priority": specs.priority,
    "missed": missed,
}


def parse_schedules(entries: Sequence[Mapping[str, Any] | Schedule]) -> tuple[Schedule, ...]:
    """Validate `[[schedule]]` tables (entries already parsed pass through); ConfigError names the
    entry and the key."""
    out: list[Schedule] = []
    for i, entry in enumerate(entries):
        schedule = entry if isinstance(entry, Schedule) else parse_one(entry, f"schedule[{i}]")
        if any(s.name == schedule.name for s in out):
            raise ConfigError(f"schedule[{i}].name: {schedule.name!r} is used by another schedule; "
                              "give each a unique name")
        out.append(schedule)
    return tuple(out)


def parse_one(entry: Mapping[str, Any], where: str) -> Schedule:
    unknown = set(entry) - FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(FIELDS))})")
    if "type" not in entry:
        raise ConfigError(f"{where}.type: expected the task type to enqueue")
    if ("cron" in entry) == ("every" in entry):
        raise ConfigError(f"{where}: give exactly one of cron (a cron expression) or every (seconds)")
    values: dict[str, Any] = {}
    for key, value in entry.items():
        try:
            values[key] = CHECKS[key](value)
        except specs.FieldError as e:
            raise ConfigError(f"{where}.{key}: {e} (got {value!r})") from None
    values.setdefault("name", f"{values['type']}@{entry.get('cron') or entry.get('every')}")
    return Schedule(**values)


def job_specs(schedules: Sequence[Schedule], known_types: Mapping[str, TaskOptions], default_retries: int,
              default_timeout: float, plugin_settings: Mapping[str, Mapping[str, Any]]) -> list[JobSpec]:
    """The job each schedule enqueues at every tick (the tick then adds its idempotency key), made
    as a request's job is: the task type must be loaded, the payload must fit its schema, and the
    task's own default timeout and retries apply. ConfigError names the schedule and the field."""
    out = []
    for i, schedule in enumerate(schedules):
        if schedule.type not in known_types:
            raise ConfigError(f"schedule[{i}].type: no loaded task type is named {schedule.type!r}")
        body: dict[str, Any] = {"type": schedule.type, "payload": schedule.payload, "queue": schedule.queue,
                                "priority": schedule.priority}
        body.update({k: v for k, v in (("retries", schedule.retries), ("timeout", schedule.timeout)) if v is not None})
        try:
            out.append(specs.parse_spec(body, f"schedule[{i}].", known_types, default_retries, default_timeout,
                                        plugin_settings))
        except ValidationError as e:
            raise ConfigError(str(e)) from None
    return out
