"""One checker per job field, shared by requests (`POST /enqueue`), `[[schedule]]` entries, `@task`
and the settings that give defaults, so a value is valid or not wherever it is written.

A checker takes the raw value and returns it converted, or raises `FieldError` saying what was
expected; the caller adds where the field was (`[2].retries`, `schedule[0].retries`,
`task(retries=...)`) and turns it into its own error (a 422, a ConfigError, a PluginError).
`parse_specs` reads a request body with them: field names are matched case-insensitively, as the Go
service's JSON decoding did, and a field nobody knows is refused instead of silently ignored.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import fastjsonschema

from .errors import ValidationError
from .job import JobSpec

if TYPE_CHECKING:
    from .task import TaskOptions

MAX_TIMEOUT = 7 * 24 * 3600.0
MAX_RETRIES = 1000
MAX_DELAY = 366 * 24 * 3600.0
MAX_PRIORITY = 9
MAX_KEY_LENGTH = 256
# Queue names go inside Redis key hash tags `{name}`, so braces and spaces are out.
QUEUE_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
QUEUE_NAME = re.compile(QUEUE_PATTERN + r"\Z")
QUEUE_EXPECTED = "a queue name of letters, digits, '_', '-' or '.' (1-64 characters)"


class FieldError(ValueError):
    """A value does not fit its field; the message says what was expected."""


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def retries(value: Any) -> int:
    if not is_integer(value) or not 0 <= value <= MAX_RETRIES:
        raise FieldError(f"expected an integer from 0 to {MAX_RETRIES}")
    return int(value)


def timeout(value: Any) -> float:
    if not is_number(value) or not 0 < value <= MAX_TIMEOUT:
        raise FieldError(f"expected a number of seconds > 0 and <= {MAX_TIMEOUT:.0f}")
    return float(value)


def priority(value: Any) -> int:
    if not is_integer(value) or not 0 <= value <= MAX_PRIORITY:
        raise FieldError(f"expected an integer from 0 to {MAX_PRIORITY} (higher runs first)")
    return int(value)


def queue(value: Any) -> str:
    if not isinstance(value, str) or QUEUE_NAME.match(value) is None:
        raise FieldError(f"expected {QUEUE_EXPECTED}")
    return value


def valid_queue_name(name: str) -> bool:
    return QUEUE_NAME.match(name) is not None


def delay(value: Any) -> float:
    if not is_number(value) or not 0 <= value <= MAX_DELAY:
        raise FieldError(f"expected a number of seconds from 0 to {MAX_DELAY:.0f}")
    return float(value)


def run_at(value: Any) -> float:
    moment = parse_time(value)
    if moment is None or moment > time.time() + MAX_DELAY:
        raise FieldError("expected an RFC 3339 time with a UTC offset (2026-12-01T09:00:00Z) "
                         "or epoch seconds, at most a year ahead")
    return moment


def key(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= MAX_KEY_LENGTH:
        raise FieldError(f"expected an idempotency key of 1 to {MAX_KEY_LENGTH} characters")
    return value


def task_type(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise FieldError("expected a non-empty string")
    return value


def payload(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise FieldError("expected a JSON object")
    return value if isinstance(value, dict) else dict(value)


def check_payload(options: TaskOptions, payload: dict[str, Any], where: str = "payload",
                  settings: Mapping[str, Any] | None = None) -> None:
    """Raise ValidationError (422) naming the first field that does not fit the task type's
    declaration: its JSON Schema, then its `validate` function."""
    if options.validator is not None:
        try:
            options.validator(payload)
        except fastjsonschema.JsonSchemaValueException as e:
            # e.path is ["data", "to", 1]; e.message starts with e.name ("data.to[1] must be ...").
            path = "".join(f"[{p}]" if str(p).isdigit() else f".{p}" for p in (e.path or ["data"])[1:])
            reason = e.message[len(e.name):].strip() if e.name and e.message.startswith(e.name) else e.message
            raise ValidationError(f"{where}{path}: {reason}", 422) from None
    if options.validate is not None:
        try:
            if options.validate_takes_settings:
                options.validate(payload, settings or {})
            else:
                options.validate(payload)
        except ValueError as e:
            raise ValidationError(f"{where}.{e}", 422) from e


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


def checked(check: Callable[[Any], Any], value: Any, where: str, status: int = 422) -> Any:
    """`check(value)`, with a FieldError turned into the ValidationError a client is shown."""
    try:
        return check(value)
    except FieldError as e:
        raise ValidationError(f"{where}: {e}", status) from None


# -- requests -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Field:
    """One field of a job request: its checker, and its JSON Schema and description for the
    OpenAPI document (api/openapi.py), so the document and the checks cannot drift apart."""

    name: str
    check: Callable[[Any], Any]
    schema: dict[str, Any]
    description: str


FIELDS = (
    Field("type", task_type, {"type": "string", "minLength": 1}, "the task type to run: a loaded plugin's"),
    Field("payload", payload, {"type": "object"}, "the handler's input; checked against the task type's schema"),
    Field("retries", retries, {"type": "integer", "minimum": 0, "maximum": MAX_RETRIES},
          "how many times a failed attempt is tried again (default: the task type's, else default_retries)"),
    Field("queue", queue, {"type": "string", "pattern": f"^{QUEUE_PATTERN}$"}, "the queue (default: default)"),
    Field("timeout", timeout, {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT},
          "seconds one attempt may run (default: the task type's, else default_timeout)"),
    Field("priority", priority, {"type": "integer", "minimum": 0, "maximum": MAX_PRIORITY},
          "0-9, higher runs first (default 0)"),
    Field("delay", delay, {"type": "number", "minimum": 0, "maximum": MAX_DELAY},
          "start no earlier than this many seconds from now"),
    Field("run_at", run_at, {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "number", "minimum": 0}]},
          "start no earlier than this time: RFC 3339 with an offset, or epoch seconds (at most a year ahead)"),
    Field("key", key, {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
          "idempotency key: the same key and work make no second job (same as the Idempotency-Key header)"),
)

# The fields a request may carry, lower-cased, each with its checker (type and payload are checked
# in `parse_spec`, where the task type's declaration is known). Anything else is refused, so a typo
# ("retires") is reported instead of silently falling back to a default.
REQUEST_FIELDS: dict[str, Callable[[Any], Any]] = {f.name: f.check for f in FIELDS}


def parse_specs(
    body: Any,
    known_types: Mapping[str, TaskOptions],
    default_retries: int,
    default_timeout: float,
    header_key: str | None = None,
    plugin_settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[JobSpec]:
    """Validate a decoded request body: one job object or a non-empty array of them.

    `header_key` is the Idempotency-Key header, the same thing as a single job's `key` field.
    Raises ValidationError naming the field (and the index, for arrays); nothing is partially valid.
    """

    def one(item: Any, where: str) -> JobSpec:
        return parse_spec(item, where, known_types, default_retries, default_timeout, plugin_settings or {})

    if isinstance(body, list):
        if not body:
            raise ValidationError("body: expected a job object or a non-empty array of them", 422)
        if header_key is not None:
            raise ValidationError("Idempotency-Key: applies to a single job; give each job of an array its own key")
        return [one(item, f"[{i}].") for i, item in enumerate(body)]
    spec = one(body, "")
    if header_key is not None:
        given = checked(key, header_key, "Idempotency-Key")
        if spec.key is not None and spec.key != given:
            raise ValidationError("key: differs from the Idempotency-Key header", 422)
        spec = replace(spec, key=given)
    return [spec]


def parse_spec(
    item: Any,
    where: str,
    known_types: Mapping[str, TaskOptions],
    default_retries: int,
    default_timeout: float,
    plugin_settings: Mapping[str, Mapping[str, Any]],
) -> JobSpec:
    if not isinstance(item, dict):
        name = "body" if not where else "job"
        raise ValidationError(f"{where}{name}: expected a JSON object with type and payload", 400)
    fields: dict[str, Any] = {}
    for name, value in item.items():
        lowered = name.lower()
        if lowered not in REQUEST_FIELDS:
            raise ValidationError(f"{where}{name}: unknown field (expected {', '.join(sorted(REQUEST_FIELDS))})")
        if lowered in fields:
            raise ValidationError(f"{where}{name}: given twice (field names are case-insensitive)")
        fields[lowered] = value

    if "type" not in fields:
        raise ValidationError(f"{where}type: required (the task type to run)")
    kind = checked(task_type, fields["type"], f"{where}type")
    if kind not in known_types:
        known = ", ".join(sorted(known_types)) or "none loaded"
        raise ValidationError(f"{where}type: unknown task type {kind[:100]!r} (known: {known})")
    if "payload" not in fields:
        raise ValidationError(f"{where}payload: required (a JSON object, may be empty)")
    body = checked(payload, fields["payload"], f"{where}payload")
    options = known_types[kind]
    check_payload(options, body, f"{where}payload", plugin_settings.get(kind))

    def given(name: str, default: Any) -> Any:
        return checked(REQUEST_FIELDS[name], fields[name], where + name) if name in fields else default

    when = None
    if "delay" in fields and "run_at" in fields:
        raise ValidationError(f"{where}delay: give either delay or run_at, not both")
    if "delay" in fields:
        when = time.time() + given("delay", 0.0)
    elif "run_at" in fields:
        when = given("run_at", None)
    return JobSpec(
        type=kind,
        payload=body,
        retries=given("retries", default_retries if options.retries is None else options.retries),
        queue=given("queue", "default"),
        timeout=given("timeout", default_timeout if options.timeout is None else options.timeout),
        priority=given("priority", 0),
        run_at=when,
        key=given("key", None),
    )
