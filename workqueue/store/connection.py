"""Connections to Redis, owned by the store, and the one place redis-py's exceptions are translated.

Every limit is set here rather than left to redis-py defaults, which changed between versions.
`boundary` wraps each store verb: a Redis that cannot be reached becomes `StoreUnavailable`, any other
Redis error `StoreError`, so no module outside the store sees a redis-py exception.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as SyncRetry

from ..errors import StoreError, StoreUnavailable

# Blocking reads wait this long at most, so a stopping worker notices within it.
BLOCK_MS = 1000
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)

P = ParamSpec("P")
R = TypeVar("R")


def translate(e: Exception) -> StoreError:
    """The workqueue error for a redis-py (or socket) exception."""
    if isinstance(e, UNAVAILABLE):
        return StoreUnavailable(f"redis: {e}")
    return StoreError(f"redis: {e}")


def boundary(verb: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """A store verb whose Redis errors come out as StoreUnavailable or StoreError."""

    @functools.wraps(verb)
    async def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await verb(*args, **kwargs)
        except (RedisError, OSError) as e:
            raise translate(e) from e

    return translated


def sync_boundary(verb: Callable[P, R]) -> Callable[P, R]:
    """`boundary` for the synchronous calls of the heartbeat thread."""

    @functools.wraps(verb)
    def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return verb(*args, **kwargs)
        except (RedisError, OSError) as e:
            raise translate(e) from e

    return translated


@dataclass(frozen=True, slots=True)
class Connections:
    """`main` serves ordinary commands; `blocking` serves blocking XREADs so waits never queue
    ordinary commands behind them, and gets a socket timeout longer than the block; `threaded` is
    a synchronous client for the worker's heartbeat thread. `embedded`: the memory:// store."""

    main: aioredis.Redis
    blocking: aioredis.Redis
    threaded: redis.Redis
    embedded: bool = False

    async def close(self) -> None:
        await self.blocking.aclose()
        await self.main.aclose()
        self.threaded.close()


def connect(url: str, timeout: float) -> Connections:
    if url.startswith("memory://"):
        return embedded()
    # One quick retry rides over a dropped connection; more would turn an outage into a hang, and a
    # timeout is not retried at all, or an unresponsive Redis would take twice as long to report.
    options: dict[str, Any] = dict(
        socket_connect_timeout=timeout,
        retry_on_error=[RedisConnectionError],
        health_check_interval=30,
    )

    def client(socket_timeout: float) -> aioredis.Redis:
        # A blocking pool: past max_connections a command waits (up to the timeout) for a free
        # connection instead of failing, so a burst of requests is not mistaken for an outage.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=256, timeout=timeout, socket_timeout=socket_timeout,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=1), **options,
        )
        return aioredis.Redis.from_pool(pool)  # the client owns the pool: closing it closes them

    threaded = redis.Redis.from_url(
        url, socket_timeout=timeout, retry=SyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=1),
        **options,
    )
    return Connections(main=client(timeout), blocking=client(BLOCK_MS / 1000 + timeout), threaded=threaded)


def embedded() -> Connections:
    """An in-process store for trying the service: one process, nothing kept after exit."""
    import fakeredis  # imported here: only the memory:// mode needs it

    server = fakeredis.FakeServer()
    return Connections(
        main=fakeredis.FakeAsyncRedis(server=server),
        blocking=fakeredis.FakeAsyncRedis(server=server),
        threaded=fakeredis.FakeRedis(server=server),
        embedded=True,
    )
