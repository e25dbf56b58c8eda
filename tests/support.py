"""Helpers the tests share: talking to the HTTP API of an in-process app or of a service process."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import FIXTURE_PLUGINS, Service, async_wait_for
from workqueue.store.keys import keys_of

# -- Redis keys, for tests that look at what the store left behind ------------------------------


def key(queue: str, name: str) -> str:
    return keys_of(queue).prefix + name


def job_key(queue: str, job_id: str) -> str:
    return keys_of(queue).job(job_id)


def streams(queue: str) -> list[str]:
    """The queue's level streams, lowest priority first."""
    return list(keys_of(queue).streams)


def idempotency_key(queue: str, user_key: str) -> str:
    return keys_of(queue).idempotency(user_key)


async def keys_matching(client: Any, pattern: str) -> list[bytes]:
    """KEYS on every master: a cluster client otherwise asks one node only."""
    if hasattr(client, "get_primaries"):
        await client.initialize()  # before its first command a cluster client knows no nodes
        return list(await client.keys(pattern, target_nodes=client.get_primaries()))
    return list(await client.keys(pattern))


def sync_keys(client: Any, pattern: str) -> list[bytes]:
    """`keys_matching` for a synchronous client."""
    if hasattr(client, "get_primaries"):
        return list(client.keys(pattern, target_nodes=client.get_primaries()))
    return list(client.keys(pattern))


# -- the HTTP API --------------------------------------------------------------------------------


async def enqueue(client: Any, **job: Any) -> str:
    job.setdefault("payload", {})
    response = await client.post("/enqueue", json=job)
    assert response.status == 202, await response.text()
    return str((await response.json())["id"])


async def get_job(client: Any, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/jobs/{job_id}")
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def wait_status(client: Any, job_id: str, status: str, timeout: float = 10) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        job = await get_job(client, job_id)
        return job if job["status"] == status else None

    return dict(await async_wait_for(reached, timeout, f"job {job_id} to be {status}"))


async def metrics(client: Any) -> dict[str, Any]:
    response = await client.get("/metrics")
    assert response.status == 200
    return dict(await response.json())


def http(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """A blocking request to a service process; (status, decoded JSON body)."""
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


def service_metrics(service: Service) -> dict[str, Any]:
    """GET /metrics of a service process."""
    return dict(http("GET", f"{service.url}/metrics")[1])


def write_config(directory: Path, redis_url: str, **values: Any) -> Path:
    """A config.toml for service processes: our Redis, the fixture plugins, and `values`."""
    directory.mkdir(parents=True, exist_ok=True)
    values = {"plugin_dirs": [str(FIXTURE_PLUGINS)], **values}
    lines = [f'redis_url = "{redis_url}"']
    lines += [f"{k} = {orjson.dumps(v).decode()}" for k, v in values.items()]
    path = directory / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
