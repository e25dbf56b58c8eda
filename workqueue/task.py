"""What a plugin author declares about a handler: payload schema, default timeout and retries.

    from workqueue import task, PermanentError

    @task(schema={"type": "object", "required": ["to"], "properties": {"to": {"type": "string"}}},
          timeout=30, retries=5)
    async def send_sms(payload, ctx):
        ...

The schema is JSON Schema (draft 7), compiled once by fastjsonschema: checking a payload costs
about a microsecond, so it can sit on the enqueue path. The producer checks it at enqueue (422
naming the field) and the worker checks it again before running (`specs.check_payload`), since a
job may have been enqueued by an older producer. `validate`, if given, is a function for checks JSON
Schema cannot express (an email address that parses, a path inside a directory); it raises
ValueError with a message that starts with the field name, e.g. "to: 'x@' is not an email address".
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import fastjsonschema

from . import specs
from .errors import ConfigError, PluginError

F = TypeVar("F", bound=Callable[..., Any])
ATTRIBUTE = "__workqueue_task__"


@dataclass(frozen=True, slots=True)
class TaskOptions:
    schema: Mapping[str, Any] | None = None
    timeout: float | None = None
    retries: int | None = None
    validate: Callable[..., None] | None = None
    settings: Callable[[Mapping[str, Any]], None] | None = None
    validator: Callable[[Any], Any] | None = field(default=None, compare=False)
    validate_takes_settings: bool = False


def task(
    *,
    schema: Mapping[str, Any] | None = None,
    timeout: float | None = None,
    retries: int | None = None,
    validate: Callable[..., None] | None = None,
    settings: Callable[[Mapping[str, Any]], None] | None = None,
) -> Callable[[F], F]:
    """Declare a handler's payload schema and its defaults for `timeout` (seconds) and `retries`.

    `validate(payload)` or `validate(payload, settings)` adds checks JSON Schema cannot make;
    `settings(table)` checks the plugin's `[plugins.<type>]` table at start-up. Both raise
    ValueError with a message that starts with the field or key at fault.
    """
    # The same checks as a job's own fields: a default that a request could not give is refused.
    timeout = None if timeout is None else option(specs.timeout, "timeout", timeout)
    retries = None if retries is None else option(specs.retries, "retries", retries)
    validator = None
    if schema is not None:
        try:
            validator = fastjsonschema.compile(dict(schema))
        except fastjsonschema.JsonSchemaDefinitionException as e:
            raise PluginError(f"task(schema=...): not a valid JSON Schema: {e}") from e
    options = TaskOptions(schema, timeout, retries, validate, settings, validator,
                          validate is not None and takes_settings(validate))

    def mark(handler: F) -> F:
        setattr(handler, ATTRIBUTE, options)
        return handler

    return mark


def option(check: Callable[[Any], Any], name: str, value: Any) -> Any:
    try:
        return check(value)
    except specs.FieldError as e:
        raise PluginError(f"task({name}={value!r}): {e}") from None


def takes_settings(validate: Callable[..., None]) -> bool:
    try:
        return len(inspect.signature(validate).parameters) >= 2
    except (TypeError, ValueError):
        return False


def options_of(handler: Callable[..., Any]) -> TaskOptions:
    found = getattr(handler, ATTRIBUTE, None)
    return found if isinstance(found, TaskOptions) else TaskOptions()


def check_settings(task_type: str, options: TaskOptions, table: Mapping[str, Any]) -> None:
    """Run the plugin's own check of its `[plugins.<type>]` table: ConfigError naming the key."""
    if options.settings is not None:
        try:
            options.settings(table)
        except ValueError as e:
            raise ConfigError(f"plugins.{task_type}.{e}") from e
