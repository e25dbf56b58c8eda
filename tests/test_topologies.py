"""What each Redis deployment adds (DESIGN section 10), in process against our own cluster and
Sentinel group: queues spread over every master, the durability setting, the refusal of a
one-server URL pointed at a cluster node. The failover tests, with real processes, are in
tests/e2e/test_failover.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import ROOT, async_wait_for, inline_task, read_log
from tests.support import job_key, wait_status
from tests.topology import queues_on_every_master


async def noop(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


def queue_names(topology: str, request: pytest.FixtureRequest) -> list[str]:
    """Six queues; on the cluster, two on each of its three masters."""
    if topology == "cluster":
        return queues_on_every_master(request.getfixturevalue("redis_cluster"), 2)
    return [f"q{i}" for i in range(6)]


@pytest.mark.topologies
async def test_a_worker_serving_queues_on_every_master_runs_them_all_and_wakes_on_each(
    make_client: Any, make_settings: Any, redis_url: str, topology: str, request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    queues = queue_names(topology, request)
    c = await make_client(make_settings(redis_url=redis_url, queues=queues, concurrency=8),
                          {"noop": inline_task("noop", noop)})
    # One request spanning every queue (and so every master): accepted whole.
    response = await c.post("/enqueue", json=[{"type": "noop", "payload": {"n": i}, "queue": queues[i % 6]}
                                              for i in range(24)])
    assert response.status == 202, await response.text()
    answers = await response.json()
    for answer in answers:
        await wait_status(c, answer["id"], "succeeded")
    assert {a["queue"] for a in answers} == set(queues)

    # Idle now: the worker blocks on one XREAD per queue. A job on any queue wakes it at once, not
    # after the block times out (1 s) nor at a poll.
    for queue in queues:
        await asyncio.sleep(0.3)  # let the fetcher go back to blocking
        response = await c.post("/enqueue", json={"type": "noop", "payload": {}, "queue": queue})
        job_id = (await response.json())["id"]
        await wait_status(c, job_id, "succeeded")

        def started(job_id: str = job_id) -> list[dict[str, Any]]:
            return [e for e in read_log(tmp_path / "logs.txt") if e["event"] == "started" and e["job_id"] == job_id]

        (event,) = await async_wait_for(started, 5, "the started line")
        assert event["wait_ms"] < 500, (queue, event)


@pytest.mark.topologies("cluster", "sentinel")
async def test_with_durability_replica_a_202_means_a_replica_has_the_job_and_its_outcome(
    make_client: Any, make_settings: Any, redis_url: str, topology: str, request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    gate = asyncio.Event()

    async def held(payload: dict[str, Any]) -> str:
        await gate.wait()
        return "done"

    c = await make_client(make_settings(redis_url=redis_url, durability="replica"), {"held": inline_task("held", held)})
    response = await c.post("/enqueue", json={"type": "held", "payload": {}})
    assert response.status == 202, await response.text()
    job_id = (await response.json())["id"]

    def replica_status() -> bytes | None:
        key = job_key("default", job_id)
        if topology == "cluster":
            cluster = request.getfixturevalue("redis_cluster")
            port = cluster.replica_of(cluster.master_of(key))
        else:
            group = request.getfixturevalue("redis_sentinel")
            port = next(s.port for s in group.servers() if s.port != group.master_port())
        with redis.Redis(port=port, socket_timeout=2) as replica:
            if topology == "cluster":
                replica.execute_command("READONLY")  # else a cluster replica redirects reads to its master
            value = replica.hget(key, "status")
            return value if value is None else bytes(value)

    # Read on the replica right after the answer: the WAIT made sure it is there.
    assert replica_status() in (b"queued", b"active")
    await wait_status(c, job_id, "active")
    gate.set()
    await wait_status(c, job_id, "succeeded")
    # The worker logs an outcome once a replica confirmed it.
    await async_wait_for(lambda: any(e["event"] == "succeeded" for e in read_log(tmp_path / "logs.txt")), 5,
                         "the succeeded line")
    assert replica_status() == b"succeeded"


async def test_with_durability_replica_and_no_replica_the_answer_is_503_saying_the_job_may_exist(
    make_client: Any, make_settings: Any, redis_url: str,
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, durability="replica", redis_timeout=0.5, role="producer"),
                          {"noop": inline_task("noop", noop)})
    for _ in range(2):  # the retry the message asks for, with the same key, makes no second job
        response = await c.post("/enqueue", json={"type": "noop", "payload": {}, "key": "order-7"})
        body = await response.json()
        assert response.status == 503 and response.headers["Retry-After"] == "1", body
        assert "no replica" in body["error"] and "may exist" in body["error"] and "Idempotency-Key" in body["error"]
    metrics = await (await c.get("/metrics")).json()
    assert metrics["jobs_enqueued"] == 1  # written on the master once, unconfirmed


def test_a_one_server_url_at_a_cluster_node_stops_start_up_naming_redis_cluster(
    redis_cluster: Any, tmp_path: Path
) -> None:
    port = redis_cluster.nodes[0].port
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "workqueue", "--role", "producer", "--redis",
                           f"redis://127.0.0.1:{port}/0", "--port", "0", "--plugins", str(ROOT / "plugins")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"redis+cluster://127.0.0.1:{port}" in lines[0] and "redis_url" in lines[0], lines
    assert time.monotonic() - began < 20
