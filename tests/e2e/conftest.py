"""Fixtures of the end-to-end suites: `slow` tests are skipped unless asked for, and measured
figures are reported (printed, and appended to $WORKQUEUE_FIGURES when set, for docs/RELIABILITY.md)."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import RedisServer, start_redis, stop_redis


@pytest.fixture(autouse=True)
def _skip_slow_unless_asked(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("slow") is None:
        return
    if os.environ.get("WORKQUEUE_SLOW") == "1" or "slow" in (request.config.getoption("markexpr", "") or ""):
        return
    pytest.skip("slow: run with -m slow or WORKQUEUE_SLOW=1")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Report a measured figure: printed, and appended to $WORKQUEUE_FIGURES when set."""

    def report(**values: Any) -> None:
        line = {"test": request.node.nodeid, "date": datetime.now(UTC).strftime("%Y-%m-%d"), **values}
        print(f"\nFIGURE {orjson.dumps(line).decode()}")
        target = os.environ.get("WORKQUEUE_FIGURES")
        if target:
            with open(target, "ab") as f:
                f.write(orjson.dumps(line) + b"\n")

    return report


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """redis-servers of this test's own (restarted, stopped, paused at will); all stopped at the end."""
    started_servers: list[RedisServer] = []

    def start(*extra: str, port: int | None = None, name: str = "redis") -> RedisServer:
        server = start_redis(tmp_path / name, port, *extra)
        started_servers.append(server)
        return server

    yield start
    for server in started_servers:
        if server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(server.process.pid, signal.SIGCONT)
        stop_redis(server)
