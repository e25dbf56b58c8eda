"""Every key of the aiohttp application and request state, in one place."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from ..config import Settings
from ..job import JobSpec
from ..logs import EventLog
from ..metrics import Metrics
from ..plugins import TaskType
from ..store import Queue
from ..worker import Worker
from .waiter import Waiter

if TYPE_CHECKING:  # workqueue.tracing imports opentelemetry: only loaded when tracing is on
    from ..tracing import Tracing

SETTINGS = web.AppKey("settings", Settings)
TASKS = web.AppKey("tasks", dict[str, TaskType])
SCHEDULED = web.AppKey("scheduled", Sequence[JobSpec])  # the job of each [[schedule]], in order
METRICS = web.AppKey("metrics", Metrics)
LOG = web.AppKey("log", EventLog)
QUEUE = web.AppKey("queue", Queue)
WORKER = web.AppKey("worker", Worker)
WAITER = web.AppKey("waiter", Waiter)
TRACING: web.AppKey[Tracing] = web.AppKey("tracing")  # only with tracing = true
REQUEST_ID = web.RequestKey("request_id", str)
