"""The Python client of the HTTP API, and the command line built on it. It imports nothing of the
service (no aiohttp, no redis), so a web app that only enqueues pulls in httpx and nothing more.

    client.py      `Client` (blocking) and `AsyncClient` (awaitable): one method per operation
    operations.py  every operation without I/O: the request, the retries, reading the answer
    results.py     the typed results: Job, Enqueued, Cancellation, Page, QueueInfo, Worker
    cli.py         `python -m workqueue <command>`: the operations for people (tables) and programs (--json)
"""

from .client import AsyncClient, Client
from .results import Cancellation, Enqueued, Job, Page, QueueInfo, Worker

__all__ = ["AsyncClient", "Cancellation", "Client", "Enqueued", "Job", "Page", "QueueInfo", "Worker"]
