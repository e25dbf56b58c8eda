"""Fixtures of the client tests: a real service process (producer and worker) on the test's Redis,
with the fixture plugins; tests of routes the service may not have yet skip until it has them."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Service
from tests.support import write_config


@pytest.fixture
def start_service(services: Callable[..., Service], redis_url: str, tmp_path: Path) -> Callable[..., Service]:
    """Start `python -m workqueue` (role both) on the test's Redis; `config` adds config keys."""

    def start(name: str = "service", **config: Any) -> Service:
        values = {"lease": 1.0, "backoff_base": 0.05, "backoff_max": 0.1, **config}
        path = write_config(tmp_path / f"{name}-config", redis_url, **values)
        return services(name, "--config", str(path)).wait_ready()

    return start


@pytest.fixture
def service(start_service: Callable[..., Service], request: pytest.FixtureRequest) -> Service:
    started = start_service()
    for marker in request.node.iter_markers("route"):
        method, path = marker.args
        if not has_route(started.url, method, path):
            pytest.skip(f"the service has no {method} {path} yet")
    return started


def has_route(url: str, method: str, path: str) -> bool:
    """Whether the service routes `method path`, asked without doing anything: a method no route
    takes (PATCH) is answered 405 where the path has a route and 404 where it has none."""
    del method  # every route of a path answers the probe alike
    request = urllib.request.Request(url + path, method="PATCH")
    try:
        urllib.request.urlopen(request, timeout=5).close()
    except urllib.error.HTTPError as e:
        return e.code != 404
    return True


def serves_wait(url: str, job_id: str) -> bool:
    """Whether GET /jobs/{id}?wait= holds the answer of an unfinished job (a service without it
    answers at once)."""
    began = time.monotonic()
    with urllib.request.urlopen(f"{url}/jobs/{job_id}?wait=1", timeout=5) as r:
        r.read()
    return time.monotonic() - began > 0.5
