"""The HTTP API contract (DESIGN section 4), end to end against our own real redis-server.

Each test starts the whole application in this process (`make_client`: every cleanup context,
the worker too unless the role says otherwise) with inline task types, so no plugin directory is
needed. "Nothing enqueued" is checked twice: through /metrics and by looking for job records in
Redis itself.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tests.conftest import async_wait_for, free_port, inline_task
from tests.support import sync_keys
from workqueue.plugins import TaskType

# Every test here runs on one server, on the Redis Cluster and on the Sentinel group.
pytestmark = pytest.mark.topologies


SEED_JOB = {
    "type": "send_email",
    "Retries": 3,
    "payload": {"to": "worldisweird2020@gmail.com", "subject": "testing producer"},
}
OK_JOB = {"type": "send_email", "payload": {"to": "a@example.com"}}
JSON = {"Content-Type": "application/json"}
RFC3339_MS_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
HEX_ID = re.compile(r"^[0-9a-f]{32}$")
SEED_METRICS = ("total_jobs_in_queue", "jobs_done", "jobs_failed")

Client = TestClient[Any, Any]
StartApi = Callable[..., Awaitable[Client]]


async def send_email(payload: dict[str, Any]) -> dict[str, Any]:
    return {"sent_to": payload.get("to"), "subject": payload.get("subject")}


def send_email_tasks(handler: Callable[..., Any] = send_email) -> dict[str, TaskType]:
    return {"send_email": inline_task("send_email", handler)}


@pytest.fixture
def start_api(make_client: Any, make_settings: Any, redis_url: str) -> StartApi:
    """Start the app on the test's clean Redis database; keyword arguments change settings."""

    async def start(handler: Callable[..., Any] = send_email, **overrides: Any) -> Client:
        settings = make_settings(**{"redis_url": redis_url, **overrides})
        return await make_client(settings, send_email_tasks(handler))  # type: ignore[no-any-return]

    return start


# -- helpers ----------------------------------------------------------------------------------


async def post_raw(client: Client, body: bytes, content_type: str | None = "application/json") -> ClientResponse:
    headers = {"Content-Type": content_type} if content_type else {}
    return await client.post("/enqueue", data=body, headers=headers)


async def expect_error(response: ClientResponse, statuses: int | set[int], *words: str) -> str:
    """The response is a JSON `{"error": ...}` with one of `statuses`, naming every word given."""
    allowed = {statuses} if isinstance(statuses, int) else statuses
    text = await response.text()
    assert response.status in allowed, f"status {response.status}, expected {sorted(allowed)}: {text}"
    assert response.content_type == "application/json", f"{response.content_type}: {text}"
    body = orjson.loads(text)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body
    assert "Traceback" not in text, text
    for word in words:
        assert word.lower() in body["error"].lower(), f"error does not name {word!r}: {body['error']!r}"
    return str(body["error"])


async def get_metrics(client: Client) -> dict[str, Any]:
    response = await client.get("/metrics")
    assert response.status == 200, await response.text()
    body = await response.json()
    for name in SEED_METRICS:
        assert type(body[name]) is int, f"{name} is not an integer: {body!r}"
    return body  # type: ignore[no-any-return]


async def get_job(client: Client, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/jobs/{job_id}")
    assert response.status == 200, await response.text()
    return await response.json()  # type: ignore[no-any-return]


async def wait_status(client: Client, job_id: str, status: str, timeout: float = 10) -> dict[str, Any]:
    last: dict[str, Any] = {}

    async def reached() -> bool:
        last.update(await get_job(client, job_id))
        return last["status"] == status

    try:
        await async_wait_for(reached, timeout, f"job {job_id} to be {status}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last record: {last}") from None
    return last


def job_keys(redis_sync: Any) -> list[bytes]:
    return sorted(sync_keys(redis_sync, "wq:*job*"))


async def assert_nothing_enqueued(client: Client, redis_sync: Any) -> None:
    metrics = await get_metrics(client)
    assert metrics["jobs_enqueued"] == 0, metrics
    assert metrics["total_jobs_in_queue"] == 0, metrics
    assert job_keys(redis_sync) == []


def parse_time(value: str) -> datetime:
    assert RFC3339_MS_UTC.match(value), value
    return datetime.fromisoformat(value)


# -- success ----------------------------------------------------------------------------------


async def test_seed_example_body_is_accepted_runs_to_success_and_is_counted(
    start_api: StartApi, redis_sync: Any
) -> None:
    # default_retries=0, so the record showing retries 3 proves "Retries" (capitalised) was read.
    client = await start_api(default_retries=0)
    response = await client.post("/enqueue", json=SEED_JOB)
    assert response.status == 202, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert HEX_ID.match(body["id"]), body
    assert body == {"id": body["id"], "status": "queued", "type": "send_email", "queue": "default"}
    assert response.headers["Location"] == f"/jobs/{body['id']}"

    job = await wait_status(client, body["id"], "succeeded")
    assert job["result"] == {"sent_to": "worldisweird2020@gmail.com", "subject": "testing producer"}
    assert job["retries"] == 3
    assert job["attempts"] == 1
    assert job["error"] is None

    metrics = await get_metrics(client)
    assert metrics["jobs_done"] == 1
    assert metrics["total_jobs_in_queue"] == 0
    assert metrics["jobs_failed"] == 0


async def test_location_header_of_an_accepted_job_resolves_to_its_record(start_api: StartApi) -> None:
    client = await start_api(role="producer")
    response = await client.post("/enqueue", json=OK_JOB)
    assert response.status == 202, await response.text()
    record = await client.get(response.headers["Location"])
    assert record.status == 200
    assert (await record.json())["id"] == (await response.json())["id"]


async def test_field_names_are_matched_case_insensitively(start_api: StartApi) -> None:
    client = await start_api()
    response = await client.post(
        "/enqueue", json={"TYPE": "send_email", "Payload": {"to": "b@example.com"}, "retries": 0}
    )
    assert response.status == 202, await response.text()
    body = await response.json()
    assert body["type"] == "send_email"
    job = await wait_status(client, body["id"], "succeeded")
    assert job["retries"] == 0
    assert job["payload"] == {"to": "b@example.com"}
    assert job["result"]["sent_to"] == "b@example.com"


async def test_json_content_type_with_charset_parameter_is_accepted(start_api: StartApi) -> None:
    client = await start_api(role="producer")
    response = await post_raw(client, orjson.dumps(OK_JOB), "application/json; charset=utf-8")
    assert response.status == 202, await response.text()


async def test_array_of_jobs_is_accepted_with_a_list_of_ids_and_every_job_runs(start_api: StartApi) -> None:
    client = await start_api()
    jobs = [{"type": "send_email", "payload": {"to": f"{i}@example.com"}} for i in range(3)]
    response = await client.post("/enqueue", json=jobs)
    assert response.status == 202, await response.text()
    answers = await response.json()
    assert isinstance(answers, list) and len(answers) == 3, answers
    ids = [a["id"] for a in answers]
    assert len(set(ids)) == 3 and all(HEX_ID.match(i) for i in ids), ids
    for answer in answers:
        assert answer == {"id": answer["id"], "status": "queued", "type": "send_email", "queue": "default"}
    for i, job_id in enumerate(ids):
        job = await wait_status(client, job_id, "succeeded")
        assert job["result"]["sent_to"] == f"{i}@example.com"
    metrics = await get_metrics(client)
    assert (metrics["jobs_done"], metrics["jobs_enqueued"], metrics["total_jobs_in_queue"]) == (3, 3, 0)


# -- validation errors: nothing is enqueued ---------------------------------------------------


@pytest.mark.parametrize(
    ("bad_item", "field"),
    [
        ({"type": "send_email", "payload": {}, "retries": -1}, "retries"),
        ({"type": "send_email"}, "payload"),
        ({"type": "no_such_task", "payload": {}}, "type"),
        ({"type": "send_email", "payload": {}, "retires": 1}, "retires"),
    ],
    ids=["retries", "payload", "type", "unknown-field"],
)
async def test_array_with_one_invalid_item_names_its_index_and_field_and_enqueues_none(
    start_api: StartApi, redis_sync: Any, bad_item: dict[str, Any], field: str
) -> None:
    client = await start_api()  # with a worker: had items 0 and 1 been enqueued, they would run
    response = await client.post("/enqueue", json=[OK_JOB, OK_JOB, bad_item, OK_JOB])
    await expect_error(response, {400, 422}, "[2]", field)
    await assert_nothing_enqueued(client, redis_sync)


async def test_empty_array_is_422_and_enqueues_nothing(start_api: StartApi, redis_sync: Any) -> None:
    client = await start_api(role="producer")
    await expect_error(await client.post("/enqueue", json=[]), 422, "array")
    await assert_nothing_enqueued(client, redis_sync)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b'{"type": "send_email", "payload": {', ["json"]),
        (b"{'type': 'send_email'}", ["json"]),
        (b"", ["body"]),
        (b"  \n", ["body"]),
    ],
    ids=["truncated", "single-quotes", "empty", "whitespace-only"],
)
async def test_body_that_is_not_json_is_400(
    start_api: StartApi, redis_sync: Any, raw: bytes, words: list[str]
) -> None:
    client = await start_api(role="producer")
    await expect_error(await post_raw(client, raw), 400, *words)
    await assert_nothing_enqueued(client, redis_sync)


@pytest.mark.parametrize("value", ["x", 3, None, True], ids=["string", "number", "null", "bool"])
async def test_json_that_is_neither_object_nor_array_is_400(
    start_api: StartApi, redis_sync: Any, value: Any
) -> None:
    client = await start_api(role="producer")
    await expect_error(await post_raw(client, orjson.dumps(value)), 400, "body")
    await assert_nothing_enqueued(client, redis_sync)


def job_with(**fields: Any) -> dict[str, Any]:
    return {"type": "send_email", "payload": {"to": "a@example.com"}, **fields}


WRONG_SHAPE = [
    # (id, body, allowed statuses, words the error must contain)
    ("type-missing", {"payload": {}}, {400, 422}, ["type"]),
    ("type-empty", job_with(type=""), {400, 422}, ["type"]),
    ("type-number", job_with(type=7), {400, 422}, ["type"]),
    ("type-list", job_with(type=["send_email"]), {400, 422}, ["type"]),
    ("type-null", job_with(type=None), {400, 422}, ["type"]),
    ("type-unknown", job_with(type="make_coffee"), {422}, ["type", "make_coffee"]),
    ("payload-missing", {"type": "send_email"}, {400, 422}, ["payload"]),
    ("payload-list", job_with(payload=[1, 2]), {400, 422}, ["payload"]),
    ("payload-string", job_with(payload="to=a@example.com"), {400, 422}, ["payload"]),
    ("payload-null", job_with(payload=None), {400, 422}, ["payload"]),
    ("retries-negative", job_with(retries=-1), {400, 422}, ["retries"]),
    ("retries-float", job_with(retries=1.5), {400, 422}, ["retries"]),
    ("retries-string", job_with(retries="3"), {400, 422}, ["retries"]),
    ("retries-bool", job_with(retries=True), {400, 422}, ["retries"]),
    ("retries-null", job_with(retries=None), {400, 422}, ["retries"]),
    ("unknown-field", job_with(retires=3), {422}, ["retires"]),
    ("same-field-twice-in-different-case", job_with(Type="send_email"), {422}, ["type"]),
    ("timeout-zero", job_with(timeout=0), {422}, ["timeout"]),
    ("timeout-negative", job_with(timeout=-5), {422}, ["timeout"]),
    ("timeout-string", job_with(timeout="10"), {422}, ["timeout"]),
    ("queue-with-space", job_with(queue="bad queue"), {422}, ["queue"]),
    ("queue-with-braces", job_with(queue="{default}"), {422}, ["queue"]),
    ("queue-empty", job_with(queue=""), {422}, ["queue"]),
    ("queue-too-long", job_with(queue="q" * 65), {422}, ["queue"]),
    ("queue-number", job_with(queue=5), {422}, ["queue"]),
]


@pytest.mark.parametrize(
    ("body", "statuses", "words"), [case[1:] for case in WRONG_SHAPE], ids=[case[0] for case in WRONG_SHAPE]
)
async def test_wrong_shape_or_value_is_4xx_naming_the_field_and_enqueues_nothing(
    start_api: StartApi, redis_sync: Any, body: Any, statuses: set[int], words: list[str]
) -> None:
    client = await start_api(role="producer")
    await expect_error(await post_raw(client, orjson.dumps(body)), statuses, *words)
    await assert_nothing_enqueued(client, redis_sync)


async def test_body_over_max_body_bytes_with_content_length_is_413_and_one_at_the_limit_is_accepted(
    start_api: StartApi, redis_sync: Any
) -> None:
    client = await start_api(role="producer", max_body_bytes=100)
    too_big = orjson.dumps(job_with(payload={"pad": "x" * 200}))
    await expect_error(await post_raw(client, too_big), 413, "body")
    await assert_nothing_enqueued(client, redis_sync)

    at_limit = orjson.dumps(job_with(payload={"pad": ""}))
    at_limit = orjson.dumps(job_with(payload={"pad": "x" * (100 - len(at_limit))}))
    assert len(at_limit) == 100
    response = await post_raw(client, at_limit)
    assert response.status == 202, await response.text()


async def test_body_over_max_body_bytes_sent_chunked_is_413(start_api: StartApi, redis_sync: Any) -> None:
    client = await start_api(role="producer", max_body_bytes=100)
    body = orjson.dumps(job_with(payload={"pad": "x" * 300}))

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 40):
            yield body[start : start + 40]

    response = await client.post("/enqueue", data=chunks(), headers=JSON)
    assert "Content-Length" not in response.request_info.headers  # it really went chunked
    await expect_error(response, 413, "body")
    await assert_nothing_enqueued(client, redis_sync)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "application/xml"])
async def test_non_json_content_type_is_415(start_api: StartApi, redis_sync: Any, content_type: str) -> None:
    client = await start_api(role="producer")
    response = await post_raw(client, orjson.dumps(OK_JOB), content_type)  # the body itself is fine
    await expect_error(response, 415, "content-type")
    await assert_nothing_enqueued(client, redis_sync)


# -- Redis unreachable ------------------------------------------------------------------------


async def test_enqueue_answers_503_with_retry_after_soon_when_redis_is_unreachable(
    make_client: Any, make_settings: Any
) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", role="producer")
    client = await make_client(settings, send_email_tasks())
    started = time.monotonic()
    response = await client.post("/enqueue", json=SEED_JOB)
    elapsed = time.monotonic() - started
    await expect_error(response, 503)
    assert int(response.headers["Retry-After"]) >= 0
    assert elapsed < 3, f"503 took {elapsed:.2f}s; a client must not hang while Redis is down"

    readyz = await client.get("/readyz")
    await expect_error(readyz, 503)
    assert (await client.get("/healthz")).status == 200
    # Other Redis-backed endpoints fail the same clean way: JSON, no traceback.
    await expect_error(await client.get("/metrics"), 503)
    await expect_error(await client.get(f"/jobs/{'0' * 32}"), 503)


async def test_readyz_and_healthz_are_200_with_redis_reachable(start_api: StartApi) -> None:
    client = await start_api()
    for path in ("/readyz", "/healthz"):
        response = await client.get(path)
        assert response.status == 200, f"{path}: {await response.text()}"
        assert response.content_type == "application/json"


# -- job records ------------------------------------------------------------------------------


async def test_unknown_or_malformed_job_id_is_404_json(start_api: StartApi) -> None:
    client = await start_api()
    await client.post("/enqueue", json=OK_JOB)  # a known queue exists, so the lookup really searches
    await expect_error(await client.get(f"/jobs/{'ab' * 16}"), 404, "id")
    await expect_error(await client.get("/jobs/not-an-id"), 404, "id")
    await expect_error(await client.get(f"/jobs/{'AB' * 16}"), 404, "id")


async def test_record_of_a_waiting_job_has_null_times_result_and_error(start_api: StartApi) -> None:
    client = await start_api(role="producer")  # no worker: the job stays queued
    before = time.time()
    job_id = (await (await client.post("/enqueue", json=OK_JOB)).json())["id"]
    job = await get_job(client, job_id)
    assert job["id"] == job_id
    assert (job["type"], job["queue"], job["status"], job["attempts"]) == ("send_email", "default", "queued", 0)
    enqueued = parse_time(job["enqueued_at"]).timestamp()
    assert before - 0.01 <= enqueued <= time.time() + 0.01
    assert job["started_at"] is None
    assert job["finished_at"] is None
    assert job["result"] is None
    assert job["error"] is None
    assert (await get_metrics(client))["total_jobs_in_queue"] == 1


async def test_record_shows_active_then_succeeded_with_ordered_rfc3339_utc_times(start_api: StartApi) -> None:
    gate = asyncio.Event()

    async def held(payload: dict[str, Any]) -> dict[str, Any]:
        await gate.wait()
        return {"ok": payload["n"]}

    client = await start_api(handler=held)
    job_id = (await (await client.post("/enqueue", json=job_with(payload={"n": 7}))).json())["id"]

    active = await wait_status(client, job_id, "active")
    assert active["attempts"] == 1
    parse_time(active["enqueued_at"])
    parse_time(active["started_at"])
    assert active["finished_at"] is None
    assert active["result"] is None
    metrics = await get_metrics(client)
    assert metrics["total_jobs_in_queue"] == 0, metrics  # active is not waiting

    gate.set()
    done = await wait_status(client, job_id, "succeeded")
    enqueued, started, finished = (parse_time(done[k]) for k in ("enqueued_at", "started_at", "finished_at"))
    assert enqueued <= started <= finished
    assert done["result"] == {"ok": 7}
    assert done["error"] is None
    assert done["attempts"] == 1


async def test_failing_handler_with_one_retry_ends_dead_after_two_attempts_and_counts_as_failed(
    start_api: StartApi,
) -> None:
    async def refuse(payload: dict[str, Any]) -> None:
        raise RuntimeError("smtp refused: mailbox full")

    client = await start_api(handler=refuse, backoff_base=0.01, backoff_max=0.02)
    response = await client.post("/enqueue", json=job_with(retries=1))
    assert response.status == 202, await response.text()
    job = await wait_status(client, (await response.json())["id"], "dead")
    assert job["attempts"] == 2
    assert "smtp refused: mailbox full" in job["error"]
    assert job["result"] is None
    parse_time(job["finished_at"])

    metrics = await get_metrics(client)
    assert (metrics["jobs_failed"], metrics["jobs_done"], metrics["total_jobs_in_queue"]) == (1, 0, 0), metrics


# -- roles, authentication, memory:// ---------------------------------------------------------


async def test_worker_role_does_not_serve_enqueue_but_serves_metrics(
    start_api: StartApi, redis_sync: Any
) -> None:
    client = await start_api(role="worker")
    await expect_error(await client.post("/enqueue", json=OK_JOB), {404, 405})
    assert job_keys(redis_sync) == []
    metrics = await get_metrics(client)
    assert all(metrics[name] == 0 for name in SEED_METRICS), metrics


async def test_api_token_is_required_on_every_endpoint_but_healthz(
    start_api: StartApi, redis_sync: Any
) -> None:
    client = await start_api(api_token="s3cret")

    missing = await client.post("/enqueue", json=OK_JOB)
    await expect_error(missing, 401)
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    for wrong in ("Bearer wrong", "Bearer s3cre", "Bearer s3cret2", "s3cret", "Basic czNjcmV0"):
        response = await client.post("/enqueue", json=OK_JOB, headers={"Authorization": wrong})
        await expect_error(response, 401)
    assert job_keys(redis_sync) == []
    for path in ("/metrics", "/readyz", f"/jobs/{'0' * 32}"):
        await expect_error(await client.get(path), 401)

    assert (await client.get("/healthz")).status == 200
    auth = {"Authorization": "Bearer s3cret"}
    accepted = await client.post("/enqueue", json=OK_JOB, headers=auth)
    assert accepted.status == 202, await accepted.text()
    record = await client.get(accepted.headers["Location"], headers=auth)
    assert record.status == 200
    assert (await client.get("/metrics", headers=auth)).status == 200


async def test_memory_store_with_role_both_runs_a_job_and_reports_it(make_client: Any, make_settings: Any) -> None:
    client = await make_client(make_settings(redis_url="memory://", role="both"), send_email_tasks())
    response = await client.post("/enqueue", json=SEED_JOB)
    assert response.status == 202, await response.text()
    job = await wait_status(client, (await response.json())["id"], "succeeded")
    assert job["result"]["sent_to"] == "worldisweird2020@gmail.com"
    metrics = await get_metrics(client)
    assert (metrics["jobs_done"], metrics["total_jobs_in_queue"], metrics["jobs_failed"]) == (1, 0, 0)
    assert (await client.get("/readyz")).status == 200


@pytest.mark.parametrize(("body", "field"), [
    ({"type": "send_email", "payload": {"to": "a@example.com", "subject": "s", "n": 2**64}}, "payload.n"),
    ({"type": "send_email", "payload": {"to": "a@example.com", "subject": "s", "n": [1, -(2**63) - 1]}},
     "payload.n[1]"),
    ([{"type": "send_email", "payload": {"to": "a@example.com", "subject": "s"}},
      {"type": "send_email", "payload": {"to": "a@example.com", "subject": "s"}, "retries": 10**30}], "[1].retries"),
])
async def test_an_integer_beyond_64_bits_is_422_naming_the_field_and_enqueues_nothing(
    start_api: StartApi, redis_sync: Any, body: Any, field: str
) -> None:
    client = await start_api()
    # Python's json writes every digit (orjson would refuse the larger ones).
    response = await client.post("/enqueue", data=json.dumps(body), headers={"Content-Type": "application/json"})
    answer = await response.json()
    assert response.status == 422, answer
    assert answer["error"].startswith(f"{field}: an integer outside the signed 64-bit range"), answer
    await assert_nothing_enqueued(client, redis_sync)


async def test_integers_at_the_64_bit_limits_and_large_floats_are_kept_exactly(start_api: StartApi) -> None:
    client = await start_api(role="producer")
    payload = {"to": "a@example.com", "subject": "s", "big": 2**63 - 1, "small": -(2**63), "float": 1e20}
    response = await client.post("/enqueue", json={"type": "send_email", "payload": payload})
    assert response.status == 202, await response.text()
    job = await (await client.get(f"/jobs/{(await response.json())['id']}")).json()
    assert (job["payload"]["big"], job["payload"]["small"], job["payload"]["float"]) == (2**63 - 1, -(2**63), 1e20)
