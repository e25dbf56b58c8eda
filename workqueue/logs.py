"""The event log: one JSON object per line in logs.txt, written by one background task.

`emit` only appends to a list, so logging never makes the event loop wait on the disk; the writer
drains the list in batches through aiofiles and `close` writes whatever is left. The writer also
keeps the file bounded: past `max_bytes` it rotates (logs.txt -> logs.txt.1 ... .<backups>, the
oldest dropped) between two lines, and `reopen` (SIGHUP, after logrotate moved the file) makes it
open the path anew. A full disk never stops the service: the lines that cannot be written are
dropped and counted, a warning goes to stderr at most once a minute, and writing resumes as soon as
the disk takes lines again.
"""

from __future__ import annotations

import asyncio
import errno
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiofiles
import aiofiles.os
import orjson

from .errors import ConfigError
from .job import rfc3339

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
WARN_EVERY = 60.0  # seconds between two stderr warnings about lines that could not be written


class EventLog:
    def __init__(self, path: str, level: str = "info", only: tuple[str, ...] = (),
                 exclude: tuple[str, ...] = (), max_bytes: int = 100 * 1024 * 1024, backups: int = 5) -> None:
        self.path = path
        self.threshold = LEVELS[level]
        self.only = frozenset(only)
        self.exclude = frozenset(exclude)
        self.max_bytes = max_bytes
        self.backups = backups
        self.lines: list[bytes] = []
        self.wakeup = asyncio.Event()
        self.closing = False
        self.reopening = False
        self.task: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = threading.get_ident()
        self.file: Any = None  # the open logs.txt (aiofiles, unbuffered), None while it cannot be opened
        self.size = 0  # bytes in the open file
        self.dropped = 0  # lines that could not be written, ever (workqueue_log_lines_dropped_total)
        self.dropped_since = 0  # of those, since the last line that was written
        self.warned_at = -WARN_EVERY  # time.monotonic() of the last stderr warning

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

    def reopen(self) -> None:
        """Open the path anew before the next line (SIGHUP: logrotate has moved the file away)."""
        self.reopening = True
        self.wakeup.set()

    async def write_forever(self) -> None:
        await self.open()
        try:
            while True:
                await self.wakeup.wait()
                self.wakeup.clear()
                if self.reopening:
                    self.reopening = False
                    await self.close_file()
                    await self.open()
                if self.lines:
                    batch, self.lines = self.lines, []
                    await self.write(batch)
                if self.closing and not self.lines:
                    return
        finally:
            await self.close_file()

    async def write(self, batch: Sequence[bytes]) -> None:
        """Write whole lines, rotating between two lines when the next would pass max_bytes."""
        start = 0
        while start < len(batch):
            if self.file is None and not await self.open():
                self.drop(len(batch) - start)
                return
            end, size, room = start, 0, self.max_bytes - self.size
            while end < len(batch) and size + len(batch[end]) <= room:
                size += len(batch[end])
                end += 1
            if end == start:  # the next line does not fit
                if self.size > 0:
                    await self.rotate()
                    continue
                end = start + 1  # a line longer than max_bytes: alone in a fresh file
            written = await self.write_lines(batch[start:end])
            if written < end - start:
                self.drop(len(batch) - start - written)
                return
            start = end

    async def write_lines(self, lines: Sequence[bytes]) -> int:
        """Write lines to the open file; how many were written whole. A line the disk took only part
        of is cut off again, so the file only ever holds whole lines."""
        data = memoryview(b"".join(lines))
        done = 0
        try:
            while done < len(data):
                n = await self.file.write(data[done:])
                if not n:
                    raise OSError(errno.ENOSPC, "the write wrote nothing")
                done += n
        except OSError as e:
            whole, kept = 0, 0
            while whole < len(lines) and kept + len(lines[whole]) <= done:
                kept += len(lines[whole])
                whole += 1
            if done > kept:
                try:
                    await self.file.truncate(await self.file.tell() - (done - kept))
                except OSError:
                    pass
            self.size += kept
            self.trouble(e)
            return whole
        self.size += done
        if self.dropped_since:
            # Writing works again: say in the log itself how many lines are missing before this one.
            self.append("log_lines_dropped", "warning", {"dropped": self.dropped_since,
                                                         "error": "the log file could not take them"})
            self.dropped_since = 0
            self.wakeup.set()
        return len(lines)

    async def open(self) -> bool:
        try:
            self.file = await aiofiles.open(self.path, "ab", buffering=0)
            self.size = await self.file.tell()
        except OSError as e:
            self.file = None
            self.trouble(e)
            return False
        return True

    async def close_file(self) -> None:
        if self.file is not None:
            file, self.file = self.file, None
            try:
                await file.close()
            except OSError:
                pass

    async def rotate(self) -> None:
        """logs.txt becomes logs.txt.1, .1 becomes .2, ..., the oldest is dropped; then a new logs.txt."""
        await self.close_file()
        try:
            if self.backups == 0:
                if await aiofiles.os.path.exists(self.path):
                    await aiofiles.os.remove(self.path)
            else:
                for n in range(self.backups - 1, 0, -1):
                    if await aiofiles.os.path.exists(f"{self.path}.{n}"):
                        await aiofiles.os.replace(f"{self.path}.{n}", f"{self.path}.{n + 1}")
                if await aiofiles.os.path.exists(self.path):  # else moved away already (logrotate)
                    await aiofiles.os.replace(self.path, f"{self.path}.1")
        except OSError as e:
            self.trouble(e)
            if await self.open():
                self.size = 0  # keep appending here rather than trying to rotate before every line
            return
        await self.open()

    def drop(self, n: int) -> None:
        self.dropped += n
        self.dropped_since += n

    def trouble(self, e: OSError) -> None:
        """The file refused a write (a full disk, most often): say so on stderr, once a minute at most."""
        now = time.monotonic()
        if now - self.warned_at >= WARN_EVERY:
            self.warned_at = now
            print(f"workqueue: warning: cannot write {self.path} ({e.strerror or e}); log lines are dropped "
                  f"and counted in workqueue_log_lines_dropped_total until it can (this warning repeats at most "
                  f"once a minute)", file=sys.stderr, flush=True)

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
