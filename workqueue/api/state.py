"""Every key of the aiohttp application and request state, in one place."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from ..config import Settings
from ..job import JobSpec
from ..logs import EventLog
from ..metrics import Metrics
from ..plugins import TaskType
from ..store import Queue
from ..worker import Worker
from .waiter import Waiter

SETTINGS = web.AppKey("settings", Settings)
TASKS = web.AppKey("tasks", dict[str, TaskType])
SCHEDULED = web.AppKey("scheduled", Sequence[JobSpec])  # the job of each [[schedule]], in order
METRICS = web.AppKey("metrics", Metrics)
LOG = web.AppKey("log", EventLog)
QUEUE = web.AppKey("queue", Queue)
WORKER = web.AppKey("worker", Worker)
WAITER = web.AppKey("waiter", Waiter)
REQUEST_ID = web.RequestKey("request_id", str)
