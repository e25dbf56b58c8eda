"""Client and AsyncClient against a real service process: every method, the typed results, errors,
retries with Retry-After and one Idempotency-Key, and `wait` with and without the service's ?wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

from tests.conftest import Service, free_port, read_log, wait_for
from tests.support import service_metrics
from workqueue import APIError, AsyncClient, Client, ServiceUnreachable
from workqueue.client.results import TERMINAL
from workqueue.job import TERMINAL as SERVICE_TERMINAL

from .conftest import serves_wait


def test_terminal_statuses_are_the_services() -> None:
    # `expired` comes with job expiry (DESIGN section 11); the client knows it already.
    assert {str(s) for s in SERVICE_TERMINAL} | {"expired"} == TERMINAL


def test_enqueue_and_wait_give_the_result(service: Service) -> None:
    with Client(service.url) as client:
        done = client.enqueue("echo", {"a": 1})
        assert (done.status, done.type, done.queue, done.duplicate) == ("queued", "echo", "default", False)
        job = client.wait(done.id, timeout=10)
    assert job.id == done.id
    assert job.status == "succeeded" and job.finished
    assert job.result == {"a": 1}
    assert job.payload == {"a": 1}
    assert (job.attempts, job.error) == (1, None)
    assert job.enqueued_at is not None and job.finished_at is not None and job.started_at is not None
    assert job.enqueued_at.tzinfo == UTC
    assert abs((datetime.now(UTC) - job.finished_at).total_seconds()) < 30
    assert job.enqueued_at <= job.started_at <= job.finished_at


async def test_async_client_enqueues_and_waits(service: Service) -> None:
    async with AsyncClient(service.url) as client:
        done = await client.enqueue("flaky", {"succeed_on": 2}, retries=3, priority=5)
        job = await client.wait(done.id, timeout=10)
        assert (job.status, job.result, job.attempts, job.priority) == ("succeeded", {"attempt": 2}, 2, 5)
        many = await client.enqueue_many([{"type": "echo", "payload": {"n": n}} for n in range(3)])
        results = [(await client.wait(e.id, timeout=10)).result for e in many]
    assert results == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_enqueue_options_reach_the_job(service: Service) -> None:
    with Client(service.url) as client:
        done = client.enqueue("echo", {}, queue="other", delay=60, retries=7, priority=3)
        job = client.get(done.id)
    assert (job.queue, job.status, job.retries, job.priority) == ("other", "scheduled", 7, 3)
    assert job.run_at is not None and job.enqueued_at is not None
    assert 55 < (job.run_at - job.enqueued_at).total_seconds() < 65


def test_enqueue_many_sends_every_job_in_one_request(service: Service) -> None:
    with Client(service.url) as client:
        jobs = [{"type": "echo", "payload": {"n": n}} for n in range(5)] + [{"type": "echo", "payload": {}, "Key": "k"}]
        accepted = client.enqueue_many(jobs)
        again = client.enqueue_many([{"type": "echo", "payload": {}, "key": "k"}])
        assert client.enqueue_many([]) == []
    assert len({e.id for e in accepted}) == 6
    assert again[0].id == accepted[-1].id and again[0].duplicate  # the caller's key is kept, not replaced
    assert service_metrics(service)["jobs_enqueued"] == 6


def test_a_given_key_makes_enqueue_idempotent(service: Service) -> None:
    with Client(service.url) as client:
        first = client.enqueue("echo", {"x": 1}, key="order-1")
        second = client.enqueue("echo", {"x": 1}, key="order-1")
        with pytest.raises(APIError) as refused:
            client.enqueue("echo", {"x": 2}, key="order-1")
    assert second.id == first.id and second.duplicate and not first.duplicate
    assert refused.value.status == 409


def test_get_shows_every_field_and_keeps_the_raw_answer(service: Service) -> None:
    with Client(service.url) as client:
        job = client.wait(client.enqueue("fail", {"message": "nope"}, retries=0).id, timeout=10)
    assert (job.status, job.error, job.result) == ("dead", "RuntimeError: nope", None)
    assert set(job.raw) >= {"id", "type", "queue", "status", "attempts", "retries", "priority", "enqueued_at",
                            "run_at", "started_at", "finished_at", "payload", "result", "error"}


def test_cancel_a_scheduled_job(service: Service) -> None:
    with Client(service.url) as client:
        done = client.enqueue("echo", {}, delay=60)
        cancelled = client.cancel(done.id)
        job = client.get(done.id)
        with pytest.raises(APIError) as again:
            client.cancel(done.id)
    assert (cancelled.id, cancelled.status, cancelled.previous_status) == (done.id, "cancelled", "scheduled")
    assert job.status == "cancelled"
    assert again.value.status == 409 and "already ended" in again.value.message


def test_dead_jobs_are_listed_retried_and_deleted(service: Service) -> None:
    with Client(service.url) as client:
        ids = [client.enqueue("fail", {"message": f"n{n}"}, retries=0).id for n in range(3)]
        for job_id in ids:
            client.wait(job_id, timeout=10)
        page = client.dead()
        assert sorted(j.id for j in page) == sorted(ids) and page.next_cursor is None
        assert all(j.status == "dead" and j.raw["died_at"] for j in page)
        first = client.dead(limit=2)
        rest = client.dead(limit=2, cursor=first.next_cursor)
        assert len(first) == 2 and first.next_cursor is not None
        assert {j.id for j in first} | {j.id for j in rest} == set(ids)

        assert client.retry_dead(ids[0]) == [ids[0]]
        assert client.wait(ids[0], timeout=10).attempts == 1  # a fresh set of attempts, failed again
        client.delete_dead(ids[1])
        assert ids[1] not in {j.id for j in client.dead()}
        with pytest.raises(APIError) as gone:
            client.delete_dead(ids[1])
        assert gone.value.status == 404

        redriven = client.retry_dead(queue="default", type="fail")
        assert sorted(redriven) == sorted([ids[0], ids[2]])
        assert client.dead(type="echo").jobs == ()
        with pytest.raises(ValueError, match="not both"):
            client.retry_dead(ids[0], queue="default")


def test_workers_and_metrics(service: Service) -> None:
    with Client(service.url) as client:
        client.wait(client.enqueue("echo", {}).id, timeout=10)
        workers = client.workers()
        metrics = client.metrics()
    assert [w.pid for w in workers] == [service.process.pid]
    (worker,) = workers
    assert worker.queues == ("default",) and worker.concurrency > 0 and worker.lease == 1.0
    assert worker.last_heartbeat is not None and worker.last_heartbeat.tzinfo == UTC
    assert metrics["jobs_done"] == 1 and metrics["queues"]["default"]["done"] == 1


def test_a_refusal_raises_api_error_at_once(service: Service) -> None:
    with Client(service.url, retries=5) as client:
        began = time.monotonic()
        with pytest.raises(APIError) as refused:
            client.enqueue("echo", {"a": 1}, priority=99)
        with pytest.raises(APIError) as unknown:
            client.get("0" * 32)
    assert time.monotonic() - began < 2  # not retried
    assert refused.value.status == 422
    assert refused.value.message.startswith("priority:")
    assert str(refused.value) == f"422: {refused.value.message}"
    assert unknown.value.status == 404 and unknown.value.message.startswith("id:")


def test_token_goes_as_a_bearer_header(start_service: Callable[..., Service]) -> None:
    service = start_service(api_token="s3cret")
    with Client(service.url, token="s3cret") as client:
        assert client.metrics()["jobs_done"] == 0
    with Client(service.url) as client, pytest.raises(APIError) as refused:
        client.metrics()
    assert refused.value.status == 401


def test_wait_raises_timeout_error_when_the_job_does_not_finish(service: Service) -> None:
    with Client(service.url) as client:
        done = client.enqueue("sleep", {"seconds": 5})
        began = time.monotonic()
        with pytest.raises(TimeoutError, match=done.id):
            client.wait(done.id, timeout=1.5)
    assert 1.4 < time.monotonic() - began < 3


def test_connection_refused_is_retried_then_raised() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url, retries=2) as client:
        began = time.monotonic()
        with pytest.raises(ServiceUnreachable, match="after 3 tries") as unreachable:
            client.get("0" * 32)
    # Two backoffs: between half and all of 0.5 s, then of 1 s.
    assert 0.7 < time.monotonic() - began < 3
    assert isinstance(unreachable.value.__cause__, httpx.ConnectError)


async def test_async_client_retries_connection_refused_too() -> None:
    async with AsyncClient(f"http://127.0.0.1:{free_port()}", retries=1) as client:
        with pytest.raises(ServiceUnreachable, match="after 2 tries"):
            await client.enqueue("echo", {})


# -- through a proxy that loses answers -----------------------------------------------------------


class Proxy:
    """An HTTP proxy to the service that can lose the first answer to POST /enqueue: it forwards
    the request (the service acts on it) and answers 503 with Retry-After: 1 anyway. It can also
    drop query strings, to play a service that does not know ?wait."""

    def __init__(self, target: str, lose_first_enqueue: bool = False, drop_query: bool = False) -> None:
        self.target = target
        self.lose_first_enqueue = lose_first_enqueue
        self.drop_query = drop_query
        self.seen: list[tuple[float, str, str, dict[str, str], Any]] = []  # time, method, path, headers, body
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((time.monotonic(), request.method, request.path_qs, dict(request.headers),
                          await request.json() if body else None))
        target = self.target + (request.path if self.drop_query else request.path_qs)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "idempotency-key")}
        async with self.session.request(request.method, target, data=body, headers=headers) as answer:
            text = await answer.read()
            status, content_type = answer.status, answer.headers.get("Content-Type", "application/json")
        if request.method == "POST" and request.path == "/enqueue" and self.lose_first_enqueue:
            self.lose_first_enqueue = False
            return web.json_response({"error": "lost on purpose"}, status=503, headers={"Retry-After": "1"})
        return web.Response(body=text, status=status, headers={"Content-Type": content_type})

    async def __aenter__(self) -> Proxy:
        self.session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()
        await self.session.close()


@pytest.fixture
async def lossy(service: Service) -> AsyncIterator[Proxy]:
    async with Proxy(service.url, lose_first_enqueue=True) as proxy:
        yield proxy


def enqueue_tries(proxy: Proxy) -> list[tuple[float, dict[str, str], Any]]:
    return [(at, headers, body) for at, method, path, headers, body in proxy.seen
            if (method, path) == ("POST", "/enqueue")]


async def test_a_lost_answer_is_retried_after_retry_after_with_the_same_key(service: Service, lossy: Proxy) -> None:
    async with AsyncClient(lossy.url) as client:
        done = await client.enqueue("echo", {"n": 1})
    tries = enqueue_tries(lossy)
    assert len(tries) == 2
    assert tries[1][0] - tries[0][0] >= 1.0  # Retry-After: 1 honoured
    keys = [headers.get("Idempotency-Key") for _, headers, _ in tries]
    assert keys[0] and keys[0] == keys[1]
    # The first try made the job; the retry found it by its key instead of making another.
    assert done.duplicate
    assert service_metrics(service)["jobs_enqueued"] == 1


async def test_the_blocking_client_retries_a_lost_answer_the_same_way(service: Service, lossy: Proxy) -> None:
    def enqueue() -> str:
        with Client(lossy.url) as client:
            return client.enqueue("echo", {"n": 1}, key="mine").id

    job_id = await asyncio.to_thread(enqueue)
    tries = enqueue_tries(lossy)
    assert [headers.get("Idempotency-Key") for _, headers, _ in tries] == ["mine", "mine"]
    assert service_metrics(service)["jobs_enqueued"] == 1
    async with AsyncClient(service.url) as client:
        assert (await client.get(job_id)).type == "echo"


async def test_a_lost_answer_to_an_array_makes_no_second_job(service: Service, lossy: Proxy) -> None:
    async with AsyncClient(lossy.url) as client:
        accepted = await client.enqueue_many([{"type": "echo", "payload": {"n": n}} for n in range(4)])
    tries = enqueue_tries(lossy)
    assert len(tries) == 2
    assert all("Idempotency-Key" not in headers for _, headers, _ in tries)  # refused with arrays
    keys = [[job["key"] for job in body] for _, _, body in tries]
    assert len(set(keys[0])) == 4 and keys[0] == keys[1]
    assert all(a.duplicate for a in accepted)
    assert service_metrics(service)["jobs_enqueued"] == 4


async def test_503_retries_are_bounded(service: Service) -> None:
    async with Proxy(service.url, lose_first_enqueue=True) as proxy, AsyncClient(proxy.url, retries=0) as client:
        with pytest.raises(APIError) as refused:
            await client.enqueue("echo", {})
    assert refused.value.status == 503 and refused.value.message == "lost on purpose"


async def test_wait_polls_a_service_that_ignores_the_wait_parameter(service: Service) -> None:
    async with Proxy(service.url, drop_query=True) as proxy, AsyncClient(proxy.url) as client:
        done = await client.enqueue("sleep", {"seconds": 1.0})
        began = time.monotonic()
        job = await client.wait(done.id, timeout=10)
        waited = time.monotonic() - began
    assert job.status == "succeeded"
    reads = [path for _, method, path, _, _ in proxy.seen if method == "GET"]
    assert reads[0].startswith(f"/jobs/{done.id}?wait=")
    assert all(path == f"/jobs/{done.id}" for path in reads[1:])  # then plain reads
    assert 1 < len(reads) < 40 and waited < 3  # short sleeps, neither a busy loop nor a long nap


def test_wait_is_one_request_when_the_service_holds_the_answer(service: Service) -> None:
    with Client(service.url) as client:
        done = client.enqueue("sleep", {"seconds": 1.5})
        if not serves_wait(service.url, done.id):
            pytest.skip("the service does not hold GET /jobs/{id}?wait= yet")
        job = client.wait(done.id, timeout=10)
    assert job.status == "succeeded"

    def reads() -> list[dict[str, Any]]:
        return [e for e in read_log(service.log_path) if e["event"] == "http_request" and e["route"] == "/jobs/{id}"]

    wait_for(lambda: len(reads()) >= 2, 5, "the request lines")
    assert len(reads()) == 2  # the probe of serves_wait, and the client's one


# -- routes the service is getting (DESIGN section 12 and 11) --------------------------------------


@pytest.mark.route("GET", "/queues")
def test_queues_lists_every_queue_with_its_counts(service: Service) -> None:
    with Client(service.url) as client:
        client.wait(client.enqueue("fail", {}, retries=0).id, timeout=10)  # the worker serves default
        client.enqueue("echo", {}, queue="q2", delay=60)
        queues = {q.name: q for q in client.queues()}
    assert {"default", "q2"} <= set(queues)
    assert (queues["default"].dead, queues["default"].paused) == (1, False)
    assert queues["q2"].scheduled == 1 and queues["q2"].limits == ()


@pytest.mark.route("GET", "/jobs")
def test_jobs_lists_a_queue_in_one_status_page_by_page(service: Service) -> None:
    with Client(service.url) as client:
        dead = [client.enqueue("fail", {}, retries=0).id for _ in range(3)]
        for job_id in dead:
            client.wait(job_id, timeout=10)
        waiting = [client.enqueue("echo", {}, queue="later", delay=60).id for _ in range(2)]
        page = client.jobs(status="dead", limit=2)
        rest = client.jobs(status="dead", limit=2, cursor=page.next_cursor)
        scheduled = client.jobs(queue="later", status="scheduled")
        typed = client.jobs(status="dead", type="echo")
    assert len(page) == 2 and page.next_cursor is not None
    assert {j.id for j in page} | {j.id for j in rest} == set(dead)
    assert all(j.status == "dead" for j in page)
    assert sorted(j.id for j in scheduled) == sorted(waiting)
    assert len(typed) == 0


@pytest.mark.route("POST", "/queues/default/pause")
@pytest.mark.route("GET", "/queues")
def test_pause_holds_a_queues_jobs_until_resume(service: Service) -> None:
    with Client(service.url) as client:
        client.pause("default")
        done = client.enqueue("echo", {"held": True})
        time.sleep(1.0)
        assert client.get(done.id).status == "queued"
        assert {q.name: q.paused for q in client.queues()}["default"] is True
        client.resume("default")
        assert client.wait(done.id, timeout=10).result == {"held": True}
