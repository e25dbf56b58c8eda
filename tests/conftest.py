"""Shared fixtures: a real redis-server of our own, settings, an in-process app, service processes.

Tests never touch a Redis they did not start. Without redis-server installed the Redis tests are
skipped on a developer machine and fail in CI (CI=true), where .ci/run installs it.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer

from workqueue.api import create_app
from workqueue.config import Settings, build
from workqueue.plugins import TaskType, load_plugins

ROOT = Path(__file__).resolve().parent.parent
FIXTURE_PLUGINS = Path(__file__).resolve().parent / "fixture_plugins"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def async_wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)


def start_redis(directory: Path, port: int | None = None, *extra: str) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; CI must install it (.ci/run does)")
        pytest.skip("redis-server is not installed")
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
         "--appendonly", "no", "--daemonize", "no", "--logfile", str(directory / "redis.log"), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(port, directory, process)

    def answers() -> bool:
        try:
            return bool(server.client().ping())
        except redis.AuthenticationError:
            return True  # it answers; the test gave it a password
        except redis.ConnectionError:
            assert process.poll() is None, f"redis-server exited: {(directory / 'redis.log').read_text()}"
            return False

    wait_for(answers, 10, "redis-server to answer PING")
    return server


def stop_redis(server: RedisServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    stop_redis(server)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Redis Cluster of our own (3 masters, 1 replica each), shared by the tests that use it."""
    from tests.topology import start_cluster

    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Sentinel group of our own (1 master, 1 replica, 3 sentinels), shared by the tests that use it."""
    from tests.topology import start_sentinel_group

    group = start_sentinel_group(tmp_path_factory.mktemp("sentinel"))
    yield group
    group.stop()


@pytest.fixture
async def redis_sync(redis_url: str) -> AsyncIterator[Any]:
    """A synchronous client of the test's Redis, whatever its topology (the store's own heartbeat
    client: a cluster client on the cluster, the Sentinels' master on the Sentinel group)."""
    from workqueue.store import connect

    connections = connect(redis_url, 5.0)
    yield connections.threaded
    await connections.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The failover tests kill and restart nodes of the shared cluster and Sentinel group (and
    restore them): they run last, so no other test meets a topology that has just changed."""
    items.sort(key=lambda item: "test_failover.py" in item.nodeid)


TOPOLOGIES = ("server", "cluster", "sentinel")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked `topologies` that uses `redis_url` runs once per Redis topology."""
    marker = metafunc.definition.get_closest_marker("topologies")
    if marker is not None and "redis_url" in metafunc.fixturenames:
        metafunc.parametrize("topology", marker.args or TOPOLOGIES, indirect=True)


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> str:
    """The Redis deployment `redis_url` points at: one server unless the test is marked `topologies`."""
    return str(getattr(request, "param", "server"))


@pytest.fixture
def redis_url(topology: str, request: pytest.FixtureRequest) -> str:
    """A clean Redis of our own for each test: one server, or the shared cluster or Sentinel group."""
    if topology == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        return str(cluster.url)
    if topology == "sentinel":
        group = request.getfixturevalue("redis_sentinel")
        group.flush()
        return str(group.url)
    server: RedisServer = request.getfixturevalue("redis_server")
    with server.client() as client:
        client.flushall()
    return server.url


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for a test: log in tmp_path, short lease and backoff, no plugin dirs."""

    def make(**values: Any) -> Settings:
        base: dict[str, Any] = {
            "log_path": str(tmp_path / "logs.txt"),
            "plugin_dirs": [],
            "lease": 1.0,
            "backoff_base": 0.05,
            "backoff_max": 0.2,
            "grace_period": 2.0,
            "redis_timeout": 1.0,
            "concurrency": 4,
        }
        base.update(values)
        return build(base, source="test")

    return make


def inline_task(name: str, handler: Callable[..., Any]) -> TaskType:
    """A task type from a function defined in a test, as a plugin would provide it."""
    return TaskType(
        name=name,
        handler=handler,
        plugin="tests",
        source="inline",
        is_coroutine=inspect.iscoroutinefunction(handler),
        wants_context="ctx" in inspect.signature(handler).parameters,
    )


@pytest.fixture
async def make_client() -> AsyncIterator[Callable[..., Any]]:
    """Start the whole app in this process (every cleanup context) and give an HTTP client to it."""
    clients: list[TestClient[Any, Any]] = []

    async def make(settings: Settings, tasks: dict[str, TaskType]) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings, tasks)))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        await client.close()


def read_log(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a log file (a line still being written is left for the next read)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    data = data[: data.rfind(b"\n") + 1]
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def fixture_tasks() -> dict[str, TaskType]:
    return load_plugins([FIXTURE_PLUGINS])


class Service:
    """`python -m workqueue` as a real child process, for crash and shutdown tests."""

    def __init__(self, directory: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.log_path = directory / "logs.txt"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("WORKQUEUE_")}
        environment.update(env or {})
        self.stderr = (directory / "stderr.txt").open("wb")
        self.stdout = (directory / "stdout.txt").open("wb")  # e.g. spans of OTEL_TRACES_EXPORTER=console
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workqueue", "--port", str(self.port), *args],
            cwd=directory,
            env=environment,
            stdout=self.stdout,
            stderr=self.stderr,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 20) -> Service:
        import urllib.request

        def ready() -> bool:
            assert self.process.poll() is None, f"service exited early: {self.read_stderr()}"
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(ready, timeout, f"service on port {self.port} to answer /healthz")
        args = list(self.process.args)  # type: ignore[arg-type]
        role = args[args.index("--role") + 1] if "--role" in args else "both"
        if role in ("worker", "both"):
            wait_for(lambda: any(e["event"] == "worker_started" for e in read_log(self.log_path)),
                     timeout, "the worker to start")
        return self

    def read_stderr(self) -> str:
        self.stderr.flush()
        return (self.directory / "stderr.txt").read_text(errors="replace")

    def read_stdout(self) -> str:
        return (self.directory / "stdout.txt").read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.stderr.close()
        self.stdout.close()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Factory of service processes; every one started is killed at the end of the test."""
    started: list[Service] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None) -> Service:
        service = Service(tmp_path / name, *args, env=env)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
