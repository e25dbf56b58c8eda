"""workqueue: a background job service. HTTP in, Redis in the middle, asyncio workers out."""

from .api import create_app
from .config import Settings
from .errors import (
    ConfigError,
    PermanentError,
    PluginError,
    QueueFull,
    StoreUnavailable,
    ValidationError,
    WorkqueueError,
)
from .job import JobContext, Status
from .task import task

__all__ = [
    "ConfigError",
    "JobContext",
    "PermanentError",
    "PluginError",
    "QueueFull",
    "Settings",
    "Status",
    "StoreUnavailable",
    "ValidationError",
    "WorkqueueError",
    "create_app",
    "task",
]
__version__ = "0.1.0"
