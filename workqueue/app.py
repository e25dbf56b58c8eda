"""Wires the roles into one aiohttp application.

Each resource is a cleanup context: set up before `yield`, torn down after it, in reverse order,
and only if it started. So on SIGTERM the worker drains first, then Redis closes, then the log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from .config import Settings
from .connection import Clients, connect
from .logs import EventLog, redact_url
from .plugins import TaskType
from .metrics import Metrics
from .producer import LOG, METRICS, QUEUE, SETTINGS, TASKS, add_routes, auth_middleware, error_middleware, request_middleware
from .queue import Queue, Retention
from .worker import Worker

WORKER = web.AppKey("worker", Worker)
CLIENTS = web.AppKey("clients", Clients)


def create_app(settings: Settings, tasks: dict[str, TaskType]) -> web.Application:
    middlewares = [request_middleware, error_middleware]
    if settings.api_token:
        middlewares.insert(1, auth_middleware(settings.api_token))
    # auto_decompress off: aiohttp would refuse encodings it cannot decode with a text/plain error
    # before any handler runs; read_json decodes gzip and deflate itself, within the size limit.
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes,
                          handler_args={"auto_decompress": False})
    app[SETTINGS] = settings
    app[TASKS] = tasks
    app[METRICS] = Metrics(tasks)
    app.cleanup_ctx.append(event_log)
    app.cleanup_ctx.append(store)
    if settings.runs_worker:
        app.cleanup_ctx.append(worker)
    add_routes(app, settings)
    return app


async def event_log(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    log = EventLog(settings.log_path, settings.log_level, settings.log_events, settings.log_exclude)
    log.start()
    app[LOG] = log
    for task in app[TASKS].values():
        log.emit("plugin_loaded", type=task.name, plugin=task.plugin, source=task.source)
    log.emit("service_started", role=settings.role, redis=redact_url(settings.redis_url),
             host=settings.host, port=settings.port)
    yield
    log.emit("service_stopped", role=settings.role)
    await log.close()


async def store(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    clients = connect(settings.redis_url, settings.redis_timeout)
    app[QUEUE] = Queue(clients.main, Retention(settings.result_ttl, settings.dead_ttl, settings.dead_max,
                                               settings.idempotency_ttl))
    app[CLIENTS] = clients
    yield
    await clients.close()


async def worker(app: web.Application) -> AsyncIterator[None]:
    w = Worker(app[SETTINGS], app[QUEUE], app[CLIENTS], app[TASKS], app[LOG], app[METRICS])
    await w.start()
    app[WORKER] = w
    yield
    await w.stop()
