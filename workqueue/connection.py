"""Redis clients with explicit timeouts and retry policy, or the embedded memory:// store.

Every limit is set here rather than left to redis-py defaults, which changed between versions.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry as SyncRetry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Blocking reads wait this long at most, so a stopping worker notices within it.
BLOCK_MS = 1000


@dataclass(frozen=True, slots=True)
class Clients:
    """`main` serves ordinary commands; `blocking` serves blocking XREADs so waits never queue
    ordinary commands behind them, and gets a socket timeout longer than the block; `threaded` is
    a synchronous client for the worker's heartbeat thread."""

    main: aioredis.Redis
    blocking: aioredis.Redis
    threaded: redis.Redis

    async def close(self) -> None:
        await self.blocking.aclose()
        await self.main.aclose()
        self.threaded.close()


def connect(url: str, timeout: float) -> Clients:
    if url.startswith("memory://"):
        return embedded()
    # One quick retry rides over a dropped connection; more would turn an outage into a hang, and a
    # timeout is not retried at all, or an unresponsive Redis would take twice as long to report.
    options = dict(
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
        url, socket_timeout=timeout, retry=SyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=1), **options,
    )
    return Clients(main=client(timeout), blocking=client(BLOCK_MS / 1000 + timeout), threaded=threaded)


def embedded() -> Clients:
    """An in-process store for trying the service: one process, nothing kept after exit."""
    import fakeredis  # imported here: only the memory:// mode needs it

    server = fakeredis.FakeServer()
    return Clients(
        main=fakeredis.FakeAsyncRedis(server=server),
        blocking=fakeredis.FakeAsyncRedis(server=server),
        threaded=fakeredis.FakeRedis(server=server),
    )


UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)
