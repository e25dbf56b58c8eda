"""workqueue: a background job service. HTTP in, Redis in the middle, asyncio workers out.

`create_app` and `Settings` are imported on first use (PEP 562): their modules pull in aiohttp and
redis, which a web app that only uses `Client` to enqueue should not have to load. `Client` and
`AsyncClient` are too, the other way round: a worker process has no use for httpx.
"""

import typing as _typing

from .errors import (
    APIError,
    ConfigError,
    PermanentError,
    PluginError,
    QueueFull,
    ServiceUnreachable,
    StoreUnavailable,
    ValidationError,
    WorkqueueError,
)
from .job import JobContext, Status

# Imported at once although only plugins use it: the decorator shares its name with its module, and
# importing the module later (the service does) would bind `workqueue.task` to the module, so a
# plugin's `from workqueue import task` would get the module. task, specs and job need no aiohttp
# and no redis.
from .task import task

if _typing.TYPE_CHECKING:  # what the lazy names are, for type checkers and editors
    from .api import create_app
    from .client import AsyncClient, Client
    from .config import Settings

_LAZY = ("create_app", "Settings", "Client", "AsyncClient")

__all__ = [
    "APIError",
    "AsyncClient",
    "Client",
    "ConfigError",
    "JobContext",
    "PermanentError",
    "PluginError",
    "QueueFull",
    "ServiceUnreachable",
    "Settings",
    "Status",
    "StoreUnavailable",
    "ValidationError",
    "WorkqueueError",
    "create_app",
    "task",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> _typing.Any:
    # Plain imports, not import_module: the names are fixed, nothing is imported by a name given at run time.
    value: object
    if name == "create_app":
        from .api import create_app

        value = create_app
    elif name == "Settings":
        from .config import Settings

        value = Settings
    elif name == "Client":
        from .client import Client

        value = Client
    elif name == "AsyncClient":
        from .client import AsyncClient

        value = AsyncClient
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
