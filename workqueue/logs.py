"""The event log: one JSON object per line in logs.txt, written by one background task.

`emit` only appends to a list, so logging never makes the event loop wait on the disk; the writer
drains the list in batches through aiofiles and `close` writes whatever is left.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiofiles
import orjson

from .errors import ConfigError
from .job import rfc3339

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class EventLog:
    def __init__(self, path: str, level: str = "info", only: tuple[str, ...] = (),
                 exclude: tuple[str, ...] = ()) -> None:
        self.path = path
        self.threshold = LEVELS[level]
        self.only = frozenset(only)
        self.exclude = frozenset(exclude)
        self.lines: list[bytes] = []
        self.wakeup = asyncio.Event()
        self.closing = False
        self.task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = threading.get_ident()

    def enabled(self, event: str, level: str = "info") -> bool:
        """Whether `emit` would write this event: lets a hot path skip building its fields."""
        return LEVELS[level] >= self.threshold and event not in self.exclude and (not self.only or event in self.only)

    def emit(self, event: str, level: str = "info", **fields: Any) -> None:
        """Queue one event; fields that are None are left out. Safe from any thread (a plain-
        function handler's ctx.log runs in a worker thread)."""
        if threading.get_ident() != self.loop_thread:
            self.emit_threadsafe(event, level, **fields)
        elif self.append(event, level, fields):
            self.wakeup.set()

    def append(self, event: str, level: str, fields: dict[str, Any]) -> bool:
        if not self.enabled(event, level):
            return False
        record = {"ts": rfc3339(time.time()), "level": level, "event": event}
        record.update((k, v) for k, v in fields.items() if v is not None)
        self.lines.append(orjson.dumps(record, default=str) + b"\n")
        return True

    def emit_for(self, job: Any, event: str, level: str = "info", **fields: Any) -> None:
        """An event about one job (what a handler's ctx.log writes)."""
        self.emit(event, level, job_id=job.id, type=job.type, queue=job.queue, attempt=job.attempts, **fields)

    def emit_threadsafe(self, event: str, level: str = "info", **fields: Any) -> None:
        """`emit` from another thread: the line goes into the buffer (a list append is atomic) and
        the writer is woken through the loop, whenever the loop runs again."""
        if self.append(event, level, fields) and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.wakeup.set)

    def start(self) -> None:
        """Start the writer; ConfigError naming log_path if the file cannot be opened for appending."""
        try:
            with open(self.path, "ab"):
                pass
        except OSError as e:
            raise ConfigError(f"log_path: cannot open {self.path} for appending ({e.strerror}); "
                              "give a writable path") from e
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.task = asyncio.create_task(self.write_forever(), name="workqueue-log-writer")

    async def write_forever(self) -> None:
        async with aiofiles.open(self.path, "ab") as f:
            while True:
                await self.wakeup.wait()
                self.wakeup.clear()
                if self.lines:
                    batch, self.lines = self.lines, []
                    try:
                        await f.write(b"".join(batch))
                        await f.flush()
                    except OSError as e:  # a full disk must not stop the jobs
                        print(f"workqueue: cannot write {self.path}: {e}", file=sys.stderr)
                if self.closing and not self.lines:
                    return

    async def close(self) -> None:
        """Write every queued line, then stop the writer."""
        self.closing = True
        self.wakeup.set()
        if self.task is not None:
            await self.task


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for a log line."""
    parts = urlsplit(url)
    query = "&".join((p.split("=", 1)[0] + "=***" if p.split("=", 1)[0].lower().endswith("password") else p)
                     for p in parts.query.split("&")) if parts.query else parts.query
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:***@{hostport}"
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return urlunsplit(parts._replace(netloc=netloc, query=query))
