"""Wires the roles into one aiohttp application.

`create_app` checks what needs both the settings and the loaded plugins (a `[plugins.<type>]` table
for a type nobody loaded, each plugin's own check of its table, each `[[schedule]]`'s task type and
payload), so an app built by a test is refused exactly as the command line is. Each resource is a
cleanup context: set up before `yield`, torn down after it, in reverse order, and only if it
started. So on SIGTERM the worker drains first, then Redis closes, then the log.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from ..config import Settings
from ..errors import ConfigError, StoreUnavailable
from ..logs import EventLog, redact_url
from ..metrics import Metrics
from ..plugins import TaskType
from ..schedule import job_specs
from ..store import Queue, Retention
from ..task import check_settings
from ..worker import Worker
from .middleware import auth_middleware, error_middleware, request_middleware
from .routes import add_routes
from .state import LOG, METRICS, QUEUE, SCHEDULED, SETTINGS, TASKS, TRACING, WAITER, WORKER
from .waiter import Waiter

if TYPE_CHECKING:
    from ..tracing import Tracing


def create_app(settings: Settings, tasks: dict[str, TaskType]) -> web.Application:
    """The application for `settings` with the task types `tasks`; ConfigError if they disagree."""
    unknown = sorted(set(settings.plugins) - set(tasks))
    if unknown:
        raise ConfigError(f"plugins.{unknown[0]}: no loaded task type is named {unknown[0]!r}")
    for name, task in tasks.items():
        check_settings(name, task.options, settings.plugins.get(name, {}))
    scheduled = job_specs(settings.schedule, {name: t.options for name, t in tasks.items()},
                          settings.default_retries, settings.default_timeout, settings.plugins)

    middlewares = [request_middleware, error_middleware]
    if settings.api_token:
        middlewares.insert(1, auth_middleware(settings.api_token))
    # auto_decompress off: aiohttp would refuse encodings it cannot decode with a text/plain error
    # before any handler runs; body.read_json decodes gzip and deflate itself, within the size limit.
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes,
                          handler_args={"auto_decompress": False})
    app[SETTINGS] = settings
    app[TASKS] = tasks
    app[SCHEDULED] = scheduled
    app[METRICS] = metrics = Metrics(tasks)
    metrics.expect([queue for queue, _ in settings.queue_weights], settings.runs_worker, settings.runs_producer)
    if settings.tracing:
        app[TRACING] = load_tracing()
        app.cleanup_ctx.append(tracing)  # first in, last out: the worker's last spans are exported
    app.cleanup_ctx.append(event_log)
    app.cleanup_ctx.append(store)
    if settings.runs_worker:
        app.cleanup_ctx.append(worker)
    add_routes(app, settings)
    return app


def load_tracing() -> Tracing:
    """Tracing as OTEL_* configures it; ConfigError naming the extra when OpenTelemetry is missing."""
    try:
        from ..tracing import Tracing
    except ImportError as e:
        if not (e.name or "").startswith("opentelemetry"):
            raise
        raise ConfigError("tracing: true needs OpenTelemetry, which is not installed; "
                          "pip install 'workqueue[otel]' (or set tracing = false)") from None
    return Tracing.start()


async def tracing(app: web.Application) -> AsyncIterator[None]:
    yield
    await asyncio.to_thread(app[TRACING].shutdown)  # exports what is left: it may wait on the network


async def event_log(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    log = EventLog(settings.log_path, settings.log_level, settings.log_events, settings.log_exclude,
                   settings.log_max_bytes, settings.log_backups)
    log.start()
    app[LOG] = log
    app[METRICS].counts.log_dropped = lambda: log.dropped
    # SIGHUP reopens logs.txt (logrotate moves it, then signals). One more handler on the loop:
    # aiohttp's own for SIGINT and SIGTERM stay as they are.
    hangup = install_signal(signal.SIGHUP, log.reopen)
    for task in app[TASKS].values():
        log.emit("plugin_loaded", type=task.name, plugin=task.plugin, source=task.source)
    log.emit("service_started", role=settings.role, redis=redact_url(settings.redis_url),
             host=settings.host, port=settings.port)
    yield
    log.emit("service_stopped", role=settings.role)
    if hangup:
        asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
    await log.close()


def install_signal(number: int, handler: Callable[[], None]) -> bool:
    """Handle a signal on the running loop; False where that is impossible (not the main thread)."""
    try:
        asyncio.get_running_loop().add_signal_handler(number, handler)
    except (NotImplementedError, RuntimeError, ValueError):
        return False
    return True


async def store(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS]
    queue = Queue.open(s.redis_url, s.redis_timeout, Retention(s.result_ttl, s.dead_ttl, s.dead_max, s.idempotency_ttl,
                                                                   s.history_max),
                       replica_wait=s.redis_timeout if s.durability == "replica" else None)
    try:
        await check_redis(queue, s, app[LOG])
    except BaseException:
        await queue.close()
        raise
    app[QUEUE] = queue
    app[WAITER] = waiter = Waiter(queue)
    yield
    await waiter.close()
    await queue.close()


async def check_redis(queue: Queue, s: Settings, log: EventLog) -> None:
    """Refuse a Redis that cannot work (a one-server URL at a cluster node, refused credentials);
    report one that can lose jobs (an evicting maxmemory-policy), or refuse it with strict_redis.
    A Redis that does not answer yet is no reason to stop: requests answer 503 meanwhile, and a
    worker waits for it."""
    try:
        inspection = await queue.inspect()
    except StoreUnavailable as e:
        log.emit("redis_unavailable", "warning", error=f"{e}; requests answer 503 until it answers")
        return
    if inspection.cluster_node:
        where = urlsplit(s.redis_url).netloc.rpartition("@")[2]
        raise ConfigError(f"redis_url: {redact_url(s.redis_url)} is a node of a Redis Cluster; "
                          f"write redis+cluster://{where} to use the cluster")
    for risk in inspection.risks():
        if s.strict_redis:
            raise ConfigError(f"strict_redis: {risk}")
        log.emit("redis_risk", "warning", error=risk)
        print(f"workqueue: warning: {risk}", file=sys.stderr, flush=True)


async def worker(app: web.Application) -> AsyncIterator[None]:
    w = Worker(app[SETTINGS], app[QUEUE], app[TASKS], app[LOG], app[METRICS], app[SCHEDULED], app.get(TRACING))
    await w.start()
    app[WORKER] = w
    yield
    await w.stop()
