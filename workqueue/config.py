"""Settings: built once at start-up from defaults < config file < environment < command line.

Every key is declared in `FIELDS` with its type; an unknown key or a bad value raises ConfigError
naming the key, so a typo in config.toml stops the service instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import specs
from .errors import ConfigError
from .schedule import Schedule, parse_schedules
from .store import address

ROLES = ("producer", "worker", "both")
DURABILITY = ("primary", "replica")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service reads from configuration. Durations are in seconds."""

    role: str = "both"
    redis_url: str = "redis://127.0.0.1:6379/0"
    host: str = "127.0.0.1"
    port: int = 8080
    concurrency: int = 20
    queues: tuple[str, ...] = ("default",)
    plugin_dirs: tuple[str, ...] = ("plugins",)
    log_path: str = "logs.txt"
    log_level: str = "info"
    log_events: tuple[str, ...] = ()  # only these events are logged; empty: all
    log_exclude: tuple[str, ...] = ()  # these events are never logged
    log_max_bytes: int = 100 * 1024 * 1024  # logs.txt rotates before it would pass this size
    log_backups: int = 5  # rotated files kept: logs.txt.1 (newest) ... logs.txt.<n>
    api_token: str = ""
    max_body_bytes: int = 1024 * 1024
    max_batch: int = 1000
    default_retries: int = 3
    default_timeout: float = 300.0
    backoff_base: float = 1.0
    backoff_max: float = 300.0
    lease: float = 10.0
    grace_period: float = 25.0
    result_ttl: float = 24 * 3600.0
    dead_ttl: float = 7 * 24 * 3600.0
    dead_max: int = 100_000
    history_max: int = 10_000  # ended jobs listed per queue and status (GET /jobs)
    idempotency_ttl: float = 24 * 3600.0
    max_length: Mapping[str, int] = field(default_factory=dict)
    priority_fairness: int = 10
    redis_timeout: float = 2.0
    durability: str = "primary"  # or "replica": a write counts once a replica confirmed it
    strict_redis: bool = False  # refuse to start on a Redis that can lose jobs (an evicting policy)
    tracing: bool = False  # OpenTelemetry spans for enqueues and attempts (needs the `otel` extra)
    plugins: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    schedule: tuple[Schedule, ...] = ()  # parsed once, here

    @property
    def runs_producer(self) -> bool:
        return self.role in ("producer", "both")

    @property
    def runs_worker(self) -> bool:
        return self.role in ("worker", "both")

    @property
    def queue_weights(self) -> list[tuple[str, int]]:
        """The queues this worker serves with their weights: "high:3" is ("high", 3); plain names weigh 1."""
        out = []
        for entry in self.queues:
            name, _, weight = entry.partition(":")
            out.append((name, int(weight) if weight else 1))
        return out

    def replace(self, **changes: Any) -> Settings:
        """A copy with some values changed, validated like any other source."""
        return build({**as_dict(self), **changes}, source="override")


# Keys that may come from the environment, and the setting each fills.
ENVIRONMENT = {
    "WORKQUEUE_ROLE": "role",
    "WORKQUEUE_REDIS_URL": "redis_url",
    "WORKQUEUE_HOST": "host",
    "WORKQUEUE_PORT": "port",
    "WORKQUEUE_CONCURRENCY": "concurrency",
    "WORKQUEUE_PLUGIN_DIRS": "plugin_dirs",
    "WORKQUEUE_API_TOKEN": "api_token",
    "WORKQUEUE_LOG_PATH": "log_path",
}

FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def as_dict(settings: Settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in FIELDS}


def load(
    config_path: str | None,
    environ: Mapping[str, str],
    overrides: Mapping[str, Any],
) -> Settings:
    """Merge the file at `config_path`, the environment and command-line `overrides`.

    `config_path` None means ./config.toml if it exists (WORKQUEUE_CONFIG names another).
    """
    path = config_path or environ.get("WORKQUEUE_CONFIG")
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_file(Path(path)))
    elif Path("config.toml").is_file():
        values.update(read_file(Path("config.toml")))
    values = check_known(values, source=str(path or "config.toml"))
    for variable, name in ENVIRONMENT.items():
        if variable in environ:
            raw = environ[variable]
            values[name] = raw.split(os.pathsep) if name == "plugin_dirs" else raw
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build(values, source="settings")


def read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} does not exist") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from e


def check_known(values: dict[str, Any], source: str) -> dict[str, Any]:
    for key in values:
        if key not in FIELDS:
            raise ConfigError(f"{source}: unknown key {key!r} (known keys: {', '.join(sorted(FIELDS))})")
    return values


def build(values: Mapping[str, Any], source: str) -> Settings:
    """Convert and check every value; raise ConfigError naming the first bad key."""
    check_known(dict(values), source)
    converted = {name: convert(name, value) for name, value in values.items()}
    settings = Settings(**converted)
    check(settings)
    return settings


def convert(name: str, value: Any) -> Any:
    """Coerce a value from TOML or a string (environment, flags) to the field's type."""
    kind = FIELDS[name].type
    try:
        if kind == "int":
            return to_int(value)
        if kind == "bool":
            return to_bool(value)
        if kind == "float":
            return to_float(value)
        if kind == "str":
            if not isinstance(value, str):
                raise TypeError("expected a string")
            return value
        if kind == "tuple[str, ...]":
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
                raise TypeError("expected a list of strings")
            return tuple(i.strip() for i in items if i.strip())
        if name == "max_length":
            if not isinstance(value, Mapping):
                raise TypeError("expected a table of queue name = maximum number of waiting jobs")
            return {str(q): to_int(n) for q, n in value.items()}
        if name == "schedule":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, (Mapping, Schedule)) for v in value):
                raise TypeError("expected [[schedule]] tables")
            return parse_schedules(value)
        if name == "plugins":
            if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
                raise TypeError("expected a table of tables, one [plugins.<type>] per task type")
            return {k: dict(v) for k, v in value.items()}
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: {e} (got {value!r})") from e
    raise AssertionError(f"no converter for {name}: {kind}")


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ValueError("expected an integer") from None
    raise TypeError("expected an integer")


def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise TypeError("expected true or false")


def to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError("expected a number of seconds")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise ValueError("expected a number of seconds") from None
    raise TypeError("expected a number of seconds")


def check(s: Settings) -> None:
    """Range and consistency checks that need more than one value's type."""

    def fail(key: str, expected: str) -> None:
        raise ConfigError(f"{key}: expected {expected} (got {getattr(s, key)!r})")

    if s.role not in ROLES:
        fail("role", "one of " + ", ".join(ROLES))
    if s.durability not in DURABILITY:
        fail("durability", "'primary' (a write counts once the master has it) or 'replica' (once a replica "
             "confirmed it too)")
    if s.log_level not in LOG_LEVELS:
        fail("log_level", "one of " + ", ".join(LOG_LEVELS))
    if not 0 <= s.port <= 65535:
        fail("port", "a TCP port 0-65535")
    for key in ("concurrency", "max_body_bytes", "max_batch", "dead_max", "history_max", "priority_fairness"):
        if getattr(s, key) < 1:
            fail(key, "an integer >= 1")
    # Defaults for a job's fields obey the same checks as the fields themselves.
    for key, field_check in (("default_retries", specs.retries), ("default_timeout", specs.timeout)):
        try:
            field_check(getattr(s, key))
        except specs.FieldError as e:
            raise ConfigError(f"{key}: {e} (got {getattr(s, key)!r})") from None
    for key in ("backoff_base", "backoff_max", "lease", "result_ttl", "dead_ttl", "idempotency_ttl",
                "redis_timeout"):
        if not getattr(s, key) > 0:
            fail(key, "a number of seconds > 0")
    if s.log_max_bytes < 1024:
        fail("log_max_bytes", "an integer >= 1024 (bytes)")
    if not 0 <= s.log_backups <= 1000:
        fail("log_backups", "an integer from 0 to 1000 (0: no rotated file is kept)")
    if s.grace_period < 0:
        fail("grace_period", "a number of seconds >= 0")
    if not s.queues:
        fail("queues", "at least one queue name")
    for entry in s.queues:
        queue, _, weight = entry.partition(":")
        if not specs.valid_queue_name(queue) or (weight and not (weight.isdigit() and 1 <= int(weight) <= 1000)):
            fail("queues", "queue names of letters, digits, '_', '-' or '.' (1-64 characters), each "
                 "optionally with a weight from 1 to 1000 as name:weight")
    for queue, limit in s.max_length.items():
        if not specs.valid_queue_name(queue) or limit < 1:
            raise ConfigError(f"max_length.{queue}: expected a queue name = an integer >= 1 (got {limit!r})")
    address.parse(s.redis_url)  # ConfigError naming redis_url and the forms it takes
    if s.redis_url.startswith("memory://") and s.durability == "replica":
        raise ConfigError("durability: 'replica' needs a Redis with replicas; memory:// has none")
    if s.redis_url.startswith("memory://") and s.role != "both":
        raise ConfigError(
            f"redis_url: memory:// is an embedded store inside one process, so it only works with "
            f"role 'both' (got role {s.role!r}); give --redis redis://HOST:PORT to run a lone {s.role}"
        )
