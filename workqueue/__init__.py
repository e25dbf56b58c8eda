"""workqueue: a background job service. HTTP in, Redis in the middle, asyncio workers out."""

from .app import create_app
from .config import Settings
from .errors import ConfigError, PluginError, StoreUnavailable, ValidationError, WorkqueueError
from .job import JobContext, Status

__all__ = [
    "ConfigError",
    "JobContext",
    "PluginError",
    "Settings",
    "Status",
    "StoreUnavailable",
    "ValidationError",
    "WorkqueueError",
    "create_app",
]
__version__ = "0.1.0"
