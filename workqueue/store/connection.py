"""Connections to Redis, owned by the store, and the one place redis-py's exceptions are translated.

One server, a Redis Cluster or a Sentinel-managed master (`address.py` reads which): each gives the
same three clients, so nothing above this module knows the topology. Every limit is set here
rather than left to redis-py defaults, which changed between versions (redis-py's cluster client,
left alone, backs off up to 10 s between retries and raises instead of waiting when a node's pool
is full). `boundary` wraps each store verb: a Redis that cannot be reached or cannot serve right
now (down, failing over, loading, out of memory) becomes `StoreUnavailable`, any other Redis error
`StoreError`, so no module outside the store sees a redis-py exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.asyncio.sentinel as aiosentinel
import redis.cluster
import redis.sentinel
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry as SyncRetry

from ..errors import StoreError, StoreOutOfMemory, StoreUnavailable
from .address import Address, Topology, parse

# Blocking reads wait this long at most, so a stopping worker notices within it.
BLOCK_MS = 1000
# Most connections a client opens (per node, on a cluster); past it a command waits for one.
MAX_CONNECTIONS = 256
# Errors that say "not now" rather than "never": Redis down or unreachable (a LOADING server is a
# ConnectionError too), a failover (READONLY, CLUSTERDOWN, MASTERDOWN, TRYAGAIN, MOVED and ASK
# storms, a blocked read UNBLOCKED by a demotion). The command had no effect, and the same command
# works once Redis has settled.
UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ClusterError, RedisClusterException, TryAgainError,
               ReadOnlyError, ClusterDownError, AskError, OSError)
TRANSIENT = ("UNBLOCKED", "NOREPLICAS")  # replies redis-py has no class for

P = ParamSpec("P")
R = TypeVar("R")


def translate(e: Exception) -> StoreError:
    """The workqueue error for a redis-py (or socket) exception."""
    if isinstance(e, OutOfMemoryError):
        return StoreOutOfMemory(f"redis: out of memory: {e}")
    if isinstance(e, UNAVAILABLE) or (isinstance(e, ResponseError) and str(e).startswith(TRANSIENT)):
        return StoreUnavailable(f"redis: {e}")
    return StoreError(f"redis: {e}")


def boundary(verb: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """A store verb whose Redis errors come out as StoreUnavailable or StoreError."""

    @functools.wraps(verb)
    async def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await verb(*args, **kwargs)
        except (RedisError, RedisClusterException, OSError) as e:
            raise translate(e) from e

    return translated


def sync_boundary(verb: Callable[P, R]) -> Callable[P, R]:
    """`boundary` for the synchronous calls of the heartbeat thread."""

    @functools.wraps(verb)
    def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return verb(*args, **kwargs)
        except (RedisError, RedisClusterException, OSError) as e:
            raise translate(e) from e

    return translated


@dataclass(frozen=True, slots=True)
class Connections:
    """`main` serves ordinary commands; `blocking` serves blocking XREADs so waits never queue
    ordinary commands behind them, and gets a socket timeout longer than the block; `threaded` is
    a synchronous client for the worker's heartbeat thread."""

    main: Any  # redis.asyncio.Redis, or a RedisCluster
    blocking: Any
    threaded: Any  # redis.Redis, or redis.cluster.RedisCluster
    topology: Topology = Topology.SERVER
    sentinels: tuple[Any, ...] = ()  # the Sentinel managers' own clients, closed with the rest

    @property
    def embedded(self) -> bool:
        return self.topology is Topology.MEMORY

    async def close(self) -> None:
        await self.blocking.aclose()
        await self.main.aclose()
        self.threaded.close()
        for client in self.sentinels:
            if isinstance(client, redis.Redis):
                client.close()
            else:
                await client.aclose()


def connect(url: str, timeout: float) -> Connections:
    """The clients for `redis_url`; nothing is sent before the first command."""
    address = parse(url)
    if address.topology is Topology.MEMORY:
        return embedded()
    if address.topology is Topology.CLUSTER:
        return cluster(address, timeout)
    if address.topology is Topology.SENTINEL:
        return sentinel(address, timeout)
    return server(url, timeout)


def retry() -> Retry:
    # One quick retry rides over a dropped connection; more would turn an outage into a hang.
    return Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=1)


def sync_retry() -> SyncRetry:
    return SyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=1)


def server(url: str, timeout: float) -> Connections:
    # A timeout is not retried (retry_on_error names connection errors only), or an unresponsive
    # Redis would take twice as long to report.
    options: dict[str, Any] = dict(socket_connect_timeout=timeout, retry_on_error=[RedisConnectionError],
                                   health_check_interval=30)

    def client(socket_timeout: float) -> aioredis.Redis:
        # A blocking pool: past max_connections a command waits (up to the timeout) for a free
        # connection instead of failing, so a burst of requests is not mistaken for an outage.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout, socket_timeout=socket_timeout, retry=retry(),
            **options)
        return aioredis.Redis.from_pool(pool)  # the client owns the pool: closing it closes them

    threaded = redis.Redis.from_url(url, socket_timeout=timeout, retry=sync_retry(), **options)
    return Connections(main=client(timeout), blocking=client(BLOCK_MS / 1000 + timeout), threaded=threaded)


class GatedCluster(aiocluster.RedisCluster):
    """redis-py's async cluster client raises MaxConnectionsError when a node's pool is full; this
    one makes a command wait for a free place instead, as the single-server blocking pool does.
    Each command or pipeline holds one place, and one connection per node it touches."""

    def __init__(self, *args: Any, places: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.places = asyncio.Semaphore(places)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.places:
            return await super().execute_command(*args, **kwargs)

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> aiocluster.ClusterPipeline:
        pipe = super().pipeline(transaction, shard_hint)
        run = pipe.execute

        async def execute(raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
            async with self.places:
                return await run(raise_on_error, allow_redirections)

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe


def cluster(address: Address, timeout: float) -> Connections:
    options: dict[str, Any] = dict(
        username=address.username, password=address.password, ssl=address.tls, socket_connect_timeout=timeout,
        **address.tls_options())

    # The retries ride over MOVED storms, a failover's CLUSTERDOWN and dropped connections, with short
    # backoffs: redis-py's default waits up to 10 s between them.
    def client(socket_timeout: float) -> GatedCluster:
        return GatedCluster(startup_nodes=[aiocluster.ClusterNode(h, p) for h, p in address.hosts],
                            socket_timeout=socket_timeout, max_connections=MAX_CONNECTIONS, places=MAX_CONNECTIONS,
                            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3),
                            require_full_coverage=False, **options)

    threaded = redis.cluster.RedisCluster(
        startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in address.hosts], socket_timeout=timeout,
        retry=SyncRetry(ExponentialWithJitterBackoff(base=0.05, cap=0.5), retries=3), require_full_coverage=False,
        **options)
    return Connections(main=client(timeout), blocking=client(BLOCK_MS / 1000 + timeout), threaded=threaded,
                       topology=Topology.CLUSTER)


class BlockingSentinelPool(aiosentinel.SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The Sentinel-managed pool (it asks the Sentinels where the master is), blocking as the
    single-server pool does: past max_connections a command waits for a free connection."""


def sentinel(address: Address, timeout: float) -> Connections:
    tls = {"ssl": True, **address.tls_options()} if address.tls else {}
    # The Sentinels' own credentials, if they need any; the URL's user and password are the master's.
    watchers: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout, **tls}
    if "sentinel_password" in address.options:
        watchers["password"] = address.options["sentinel_password"]
        watchers["username"] = address.options.get("sentinel_username") or None
    node: dict[str, Any] = dict(username=address.username, password=address.password, db=address.db,
                                socket_connect_timeout=timeout, retry_on_error=[RedisConnectionError], **tls)

    managers: list[Any] = [aiosentinel.Sentinel(address.hosts, sentinel_kwargs=watchers) for _ in range(2)]
    threaded_manager: Any = redis.sentinel.Sentinel(address.hosts, sentinel_kwargs=watchers)

    def client(manager: aiosentinel.Sentinel, socket_timeout: float) -> aioredis.Redis:
        return manager.master_for(address.service, connection_pool_class=BlockingSentinelPool,
                                  socket_timeout=socket_timeout, retry=retry(), max_connections=MAX_CONNECTIONS,
                                  timeout=timeout, **node)

    threaded = threaded_manager.master_for(address.service, socket_timeout=timeout, retry=sync_retry(), **node)
    return Connections(main=client(managers[0], timeout), blocking=client(managers[1], BLOCK_MS / 1000 + timeout),
                       threaded=threaded, topology=Topology.SENTINEL,
                       sentinels=tuple(c for m in (*managers, threaded_manager) for c in m.sentinels))


async def load_script(connections: Connections, source: str) -> None:
    """Put a script in the cache of the server, or of every node of a cluster, replicas included:
    a replica promoted later then has it already, and a node that cannot take it now (down, in the
    middle of a failover) is passed over."""
    client = connections.main
    if connections.topology is not Topology.CLUSTER:
        await client.script_load(source)
        return
    await client.initialize()
    for node in client.get_nodes():
        with contextlib.suppress(RedisError, RedisClusterException, OSError):
            await client.execute_command("SCRIPT LOAD", source, target_nodes=node)


async def script_then_wait(connections: Connections, sha: str, source: str, keys: list[str], args: list[Any],
                           wait_ms: int) -> tuple[Any, int]:
    """Run a script, then `WAIT 1 wait_ms` on the same connection to the same master: WAIT counts
    the replicas that have every write *this connection* made, so asked on another connection (a
    bare WAIT through a pool or a cluster client lands anywhere) it proves nothing. Returns the
    script's reply and how many replicas confirmed it."""
    if connections.topology is Topology.CLUSTER:
        client = connections.main
        await client.initialize()  # a cluster client knows no nodes before its first command
        node = client.get_node_from_key(keys[0])  # the master serving the keys' slot
        async with client.places:
            connection = node.acquire_connection()
            try:
                return await pinned(connection, sha, source, keys, args, wait_ms)
            except (RedisConnectionError, RedisTimeoutError, ResponseError, OSError):
                # Going around redis-py's command path skips its reaction to a failover: learn
                # the slots again, so the next call reaches the new master.
                with contextlib.suppress(RedisError, RedisClusterException, OSError):
                    await client.nodes_manager.initialize()
                raise
            finally:
                node.release(connection)
    pool = connections.main.connection_pool
    connection = await pool.get_connection()
    try:
        return await pinned(connection, sha, source, keys, args, wait_ms)
    finally:
        await pool.release(connection)


async def pinned(connection: Any, sha: str, source: str, keys: list[str], args: list[Any],
                 wait_ms: int) -> tuple[Any, int]:
    async def call(*command: Any, timeout: float | None = None) -> Any:
        await connection.send_command(*command)
        return await connection.read_response(timeout=timeout)

    try:
        try:
            reply = await call("EVALSHA", sha, len(keys), *keys, *args)
        except NoScriptError:  # a restart or a promotion emptied the script cache
            await call("SCRIPT", "LOAD", source)
            reply = await call("EVALSHA", sha, len(keys), *keys, *args)
        # WAIT blocks for up to wait_ms by design: read its answer past the socket timeout.
        acked = await call("WAIT", 1, wait_ms, timeout=wait_ms / 1000 + connection.socket_timeout)
    except BaseException:
        # Cut short (cancelled, or an error): a reply may still be on its way; never reuse it.
        await connection.disconnect(nowait=True)
        raise
    if isinstance(reply, ResponseError):
        raise reply
    return reply, int(acked)


def embedded() -> Connections:
    """An in-process store for trying the service: one process, nothing kept after exit."""
    import fakeredis  # imported here: only the memory:// mode needs it

    server = fakeredis.FakeServer()
    return Connections(
        main=fakeredis.FakeAsyncRedis(server=server),
        blocking=fakeredis.FakeAsyncRedis(server=server),
        threaded=fakeredis.FakeRedis(server=server),
        topology=Topology.MEMORY,
    )
