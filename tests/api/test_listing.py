"""Listing and waiting (DESIGN section 12): GET /queues, GET /jobs?queue=&status=&type=&limit=&cursor=
and GET /jobs/{id}?wait=N, on one server, the cluster and the Sentinel group.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import inline_task
from tests.support import wait_status

pytestmark = pytest.mark.topologies
Client = TestClient[Any, Any]


async def noop(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


async def fail(payload: dict[str, Any]) -> None:
    raise RuntimeError("no")


TASKS = {"noop": inline_task("noop", noop), "other": inline_task("other", noop), "fail": inline_task("fail", fail)}


async def post(c: Client, body: Any) -> Any:
    response = await c.post("/enqueue", json=body)
    assert response.status == 202, await response.text()
    return await response.json()


async def page(c: Client, **params: Any) -> dict[str, Any]:
    response = await c.get("/jobs", params={k: str(v) for k, v in params.items()})
    assert response.status == 200, await response.text()
    return dict(await response.json())


async def all_pages(c: Client, cursor: str | None = None, **params: Any) -> list[str]:
    ids: list[str] = []
    for _ in range(100):
        got = await page(c, **params, **({"cursor": cursor} if cursor else {}))
        ids += [j["id"] for j in got["jobs"]]
        cursor = got["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("paging did not end")


async def test_queued_jobs_are_listed_in_the_order_they_will_run_and_paged_without_loss(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, role="producer"), TASKS)
    low = [a["id"] for a in await post(c, [{"type": "noop", "payload": {"n": i}} for i in range(5)])]
    high = [a["id"] for a in await post(c, [{"type": "other", "payload": {}, "priority": 9} for _ in range(3)])]
    mid = (await post(c, {"type": "noop", "payload": {}, "priority": 4}))["id"]

    first = await page(c, limit=4)
    assert [j["id"] for j in first["jobs"]] == [*high, mid]
    assert all(j["status"] == "queued" for j in first["jobs"]) and first["next_cursor"]
    assert await all_pages(c, limit=3) == [*high, mid, *low]
    assert await all_pages(c, type="other", limit=2) == high
    assert await all_pages(c, status="queued", queue="elsewhere") == []

    # Jobs that come while paging show up at their place; none is repeated.
    second = await page(c, limit=5)
    late = (await post(c, {"type": "noop", "payload": {}}))["id"]
    rest = await all_pages(c, limit=5, cursor=second["next_cursor"])
    assert [j["id"] for j in second["jobs"]] + rest == [*high, mid, *low, late]


async def test_running_scheduled_retrying_and_ended_jobs_are_listed(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    gate = asyncio.Event()

    async def held(payload: dict[str, Any]) -> None:
        await gate.wait()

    tasks = {**TASKS, "held": inline_task("held", held)}
    c = await make_client(make_settings(redis_url=redis_url, concurrency=2, backoff_base=30, backoff_max=60), tasks)
    running = [a["id"] for a in await post(c, [{"type": "held", "payload": {}} for _ in range(2)])]
    for job_id in running:
        await wait_status(c, job_id, "active")
    later = (await post(c, {"type": "noop", "payload": {}, "delay": 600}))["id"]
    assert sorted(await all_pages(c, status="active", limit=1)) == sorted(running)
    assert await all_pages(c, status="scheduled") == [later]

    gate.set()
    done = [a["id"] for a in await post(c, [{"type": "noop", "payload": {"n": i}} for i in range(3)])]
    failing = (await post(c, {"type": "fail", "payload": {}, "retries": 1}))["id"]
    dying = (await post(c, {"type": "fail", "payload": {}, "retries": 0}))["id"]
    for job_id in [*running, *done]:
        await wait_status(c, job_id, "succeeded")
    await wait_status(c, failing, "retrying")
    await wait_status(c, dying, "dead")
    cancelled = (await post(c, {"type": "noop", "payload": {}, "delay": 600}))["id"]
    assert (await c.post(f"/jobs/{cancelled}/cancel")).status == 200

    assert await all_pages(c, status="retrying") == [failing]
    assert await all_pages(c, status="scheduled") == [later]
    assert await all_pages(c, status="dead") == [dying]
    assert await all_pages(c, status="cancelled") == [cancelled]
    succeeded = await all_pages(c, status="succeeded", limit=2)
    assert sorted(succeeded) == sorted([*running, *done])
    ends = [(await (await c.get(f"/jobs/{j}")).json())["finished_at"] for j in succeeded]
    assert ends == sorted(ends, reverse=True), "ended jobs are listed newest first"
    assert await all_pages(c, status="succeeded", type="held") == [j for j in succeeded if j in running]


async def test_the_history_keeps_at_most_history_max_per_status(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, history_max=3), TASKS)
    ids = [a["id"] for a in await post(c, [{"type": "noop", "payload": {"n": i}} for i in range(8)])]
    for job_id in ids:
        await wait_status(c, job_id, "succeeded")
    listed = await all_pages(c, status="succeeded")
    assert len(listed) == 3 and set(listed) <= set(ids)


@pytest.mark.parametrize(("params", "name"), [
    ({"status": "bogus"}, "status"), ({"limit": "0"}, "limit"), ({"limit": "501"}, "limit"),
    ({"limit": "x"}, "limit"), ({"queue": "has space"}, "queue"), ({"cursor": "not a cursor"}, "cursor"),
    ({"status": "succeeded", "cursor": "9 1-0"}, "cursor"), ({"cursor": "1.5"}, "cursor"),
])
async def test_bad_listing_parameters_are_400_naming_the_parameter(
    make_client: Any, make_settings: Any, redis_url: str, params: dict[str, str], name: str
) -> None:
    c = await make_client(make_settings(redis_url=redis_url, role="producer"), TASKS)
    response = await c.get("/jobs", params=params)
    body = await response.json()
    assert response.status == 400 and body["error"].startswith(f"{name}:"), body


async def test_queues_lists_every_queue_with_its_counts(make_client: Any, make_settings: Any, redis_url: str) -> None:
    c = await make_client(make_settings(redis_url=redis_url, role="producer"), TASKS)
    await post(c, [{"type": "noop", "payload": {}, "queue": "mail"}, {"type": "noop", "payload": {}, "queue": "mail"},
                   {"type": "noop", "payload": {}, "delay": 60}])
    body = await (await c.get("/queues")).json()
    assert body == {"queues": [
        {"name": "default", "paused": False, "queued": 0, "scheduled": 1, "active": 0, "blocked": 0, "dead": 0,
         "limits": []},
        {"name": "mail", "paused": False, "queued": 2, "scheduled": 0, "active": 0, "blocked": 0, "dead": 0,
         "limits": []},
    ]}


async def test_wait_answers_as_soon_as_the_job_ends_or_when_the_wait_runs_out(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    gate = asyncio.Event()

    async def held(payload: dict[str, Any]) -> str:
        await gate.wait()
        return "done"

    c = await make_client(make_settings(redis_url=redis_url), {**TASKS, "held": inline_task("held", held)})
    job_id = (await post(c, {"type": "held", "payload": {}}))["id"]

    began = time.monotonic()
    response = await c.get(f"/jobs/{job_id}", params={"wait": "0.3"})
    assert response.status == 200 and (await response.json())["status"] in ("queued", "active")
    assert time.monotonic() - began >= 0.3

    waiters = [asyncio.create_task(c.get(f"/jobs/{job_id}", params={"wait": "30"})) for _ in range(20)]
    await asyncio.sleep(0.2)
    assert not any(w.done() for w in waiters)
    ended = time.monotonic()
    gate.set()
    answers = await asyncio.gather(*waiters)
    took = time.monotonic() - ended
    assert all(a.status == 200 for a in answers)
    assert {(await a.json())["result"] for a in answers} == {"done"}
    assert took < 2, f"the waiting requests answered {took:.2f} s after the job ended"
    # A job that has ended already answers at once.
    began = time.monotonic()
    assert (await (await c.get(f"/jobs/{job_id}", params={"wait": "30"})).json())["status"] == "succeeded"
    assert time.monotonic() - began < 1


@pytest.mark.parametrize("wait", ["-1", "61", "x", "nan", "inf"])
async def test_a_bad_wait_is_400_naming_it(make_client: Any, make_settings: Any, redis_url: str, wait: str) -> None:
    c = await make_client(make_settings(redis_url=redis_url, role="producer"), TASKS)
    job_id = (await post(c, {"type": "noop", "payload": {}}))["id"]
    response = await c.get(f"/jobs/{job_id}", params={"wait": wait})
    assert response.status == 400 and (await response.json())["error"].startswith("wait:")
