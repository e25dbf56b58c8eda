"""The HTTP routes: POST /enqueue (producer role) and the read and control endpoints every role
serves. Handlers raise workqueue errors; `middleware.error_middleware` turns them into answers.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from ..config import Settings
from ..errors import StoreError, StoreUnavailable, ValidationError
from ..job import TERMINAL, WAITING, JobSpec, Status, rfc3339, valid_id
from ..metrics import timing_summary, wants_prometheus
from ..specs import parse_specs, valid_queue_name
from ..store import Enqueued
from .body import read_json
from .middleware import error, json_response
from .openapi import document
from .state import LOG, METRICS, QUEUE, REQUEST_ID, SETTINGS, TASKS, TRACING, WAITER

MAX_WAIT = 60.0  # seconds a GET /jobs/{id}?wait may hold a request
# The statuses GET /jobs lists, and the shape of their cursors.
LISTED = tuple(s.value for s in (Status.QUEUED, Status.ACTIVE, Status.SCHEDULED, Status.RETRYING, Status.SUCCEEDED,
                                 Status.DEAD, Status.CANCELLED))
SCORE = r"\d{1,20}(\.\d{1,20})?(e[+-]?\d{1,3})?"
CURSORS = {  # what a cursor of each status looks like: a level and stream entry, a due time and id, a score
    **dict.fromkeys((Status.QUEUED, Status.ACTIVE), re.compile(r"^\d \d{1,19}-\d{1,19}$")),
    **dict.fromkeys((Status.SCHEDULED, Status.RETRYING), re.compile(rf"^{SCORE} [0-9a-f]{{32}}$")),
    **dict.fromkeys((Status.SUCCEEDED, Status.DEAD, Status.CANCELLED), re.compile(rf"^{SCORE}$")),
}


async def enqueue(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = await read_json(request, settings.max_body_bytes)
    if isinstance(body, list) and len(body) > settings.max_batch:
        raise ValidationError(f"body: at most {settings.max_batch} jobs per request (got {len(body)})", 413)
    declared = {name: t.options for name, t in request.app[TASKS].items()}
    specs = parse_specs(body, declared, settings.default_retries, settings.default_timeout,
                        request.headers.get("Idempotency-Key"), settings.plugins)
    # One bound for the whole Redis part, waiting for a batch in flight included: a hung Redis
    # (SIGSTOP, CLIENT PAUSE) answers 503 this fast, not after a retry or two. With durability
    # "replica", the wait for a replica's confirmation (itself bounded by redis_timeout) comes on top.
    bound = settings.redis_timeout * (2 if settings.durability == "replica" else 1)
    tracing = request.app.get(TRACING)
    if tracing is None:
        results = await store_jobs(request, specs, bound)
    else:  # the request's trace context (a child span of it, in fact) is kept with each job
        with tracing.enqueue(request.headers, specs) as (span, context):
            results = await store_jobs(request, [replace(s, trace=context) for s in specs], bound)
            if len(results) == 1:
                span.set_attribute("workqueue.job_id", results[0].id)
    log, metrics = request.app[LOG], request.app[METRICS]
    for done in results:
        if done.created:
            metrics.count_enqueued(done.spec.queue, done.spec.type)
            log.emit("enqueued", job_id=done.id, type=done.spec.type, queue=done.spec.queue, status=done.status,
                     request_id=request[REQUEST_ID])
    if isinstance(body, list):
        return json_response([accepted(done) for done in results], 202)
    (done,) = results
    # An idempotent repeat answers 200 with the job the key already names; a new job is 202.
    return json_response(accepted(done), 202 if done.created else 200, {"Location": f"/jobs/{done.id}"})


async def store_jobs(request: web.Request, specs: list[JobSpec], bound: float) -> list[Enqueued]:
    try:
        async with asyncio.timeout(bound):
            return await request.app[QUEUE].enqueue(specs, request.app[SETTINGS].max_length)
    except TimeoutError as e:
        raise StoreUnavailable(f"redis did not answer within {bound:g} s") from e


def accepted(done: Enqueued) -> dict[str, Any]:
    answer: dict[str, Any] = {"id": done.id, "status": done.status, "type": done.spec.type, "queue": done.spec.queue}
    if not done.created:
        answer["duplicate"] = True
    return answer


async def get_job(request: web.Request) -> web.Response:
    """The job; with ?wait=N (seconds, at most 60), once it has ended or when N runs out."""
    job_id = request.match_info["id"]
    wait = query_number(request.query.get("wait"), "wait", 0.0, MAX_WAIT)
    record = await request.app[QUEUE].get_job(job_id) if valid_id(job_id) else None
    if record is None:
        return error(404, f"id: no job {job_id[:64]!r} (unknown, or expired after its result TTL)")
    if wait and record["status"] not in TERMINAL:
        await request.app[WAITER].wait(record["queue"], job_id, wait)
        record = await request.app[QUEUE].get_job(job_id) or record
    return json_response(present(record))


async def list_jobs(request: web.Request) -> web.Response:
    """One page of a queue's jobs in one status: GET /jobs?queue=&status=&type=&limit=&cursor=."""
    query = request.query
    queue = query_queue(query) or "default"
    status = query.get("status", Status.QUEUED)
    if status not in LISTED:
        raise ValidationError(f"status: expected one of {', '.join(LISTED)} (got {status[:40]!r})", 400)
    limit = query_int(query.get("limit", "50"), "limit", 1, 500)
    cursor = query.get("cursor") or None
    if cursor is not None and (len(cursor) > 200 or not CURSORS[Status(status)].match(cursor)):
        raise ValidationError("cursor: expected the next_cursor of a previous page", 400)
    records, next_cursor = await request.app[QUEUE].jobs(queue, status, query.get("type") or None, limit, cursor)
    return json_response({"jobs": [present(r) for r in records], "next_cursor": next_cursor})


async def list_queues(request: web.Request) -> web.Response:
    """Every queue ever used, with its jobs by status."""
    rows = await request.app[QUEUE].stats()
    return json_response({"queues": [
        {"name": name, "paused": False, "queued": row["waiting"], "scheduled": row["scheduled"],
         "active": row["active"], "blocked": 0, "dead": row["dead"], "limits": []}
        for name, row in sorted(rows.items())]})


def present(record: dict[str, str]) -> dict[str, Any]:
    """A job hash from Redis as the API shows it."""

    def time_of(name: str) -> str | None:
        value = record.get(name)
        return rfc3339(float(value)) if value else None

    started = record.get("started_at")
    return {
        "id": record["id"],
        "type": record["type"],
        "queue": record["queue"],
        "status": record["status"],
        "attempts": int(record.get("attempts", 0)),
        "retries": int(record.get("retries", 0)),
        "priority": int(record.get("priority", 0)),
        "enqueued_at": time_of("enqueued_at"),
        "run_at": time_of("run_at"),  # when a delayed job or the latest retry was due
        "started_at": time_of("started_at") if started else None,
        "finished_at": time_of("finished_at"),
        "payload": orjson.loads(record["payload"]),
        "result": orjson.loads(record["result"]) if "result" in record else None,
        "error": record.get("error"),
    }


async def cancel_job(request: web.Request) -> web.Response:
    job_id = request.match_info["id"]
    changed = await request.app[QUEUE].cancel(job_id) if valid_id(job_id) else None
    if changed is None:
        return error(404, f"id: no job {job_id[:64]!r} (unknown, or expired after its result TTL)")
    before, after = changed
    if before in TERMINAL:
        return error(409, f"id: job {job_id} has already ended ({before}); nothing to cancel")
    if before in WAITING:  # the cancel itself ended it (a running job is counted by its worker)
        record = await request.app[QUEUE].get_job(job_id)
        request.app[METRICS].count_job(record["queue"] if record else "other", record["type"] if record else "other",
                                       "cancelled")
    request.app[LOG].emit("cancel_requested", job_id=job_id, previous_status=before)
    # A running job's handler is stopped by the worker holding it; the job is cancelled either way.
    return json_response({"id": job_id, "status": after, "previous_status": before})


async def list_dead(request: web.Request) -> web.Response:
    query = request.query
    queue = query_queue(query)
    limit = query_int(query.get("limit", "50"), "limit", 1, 1000)
    cursor = query.get("cursor")
    before = None
    if cursor:
        try:
            before = float(cursor)
        except ValueError:
            before = math.nan
        if not math.isfinite(before):
            raise ValidationError("cursor: expected the next_cursor of a previous page", 400)
    records = await request.app[QUEUE].dead(queue, query.get("type") or None, limit, before)
    jobs = [present(r) | {"died_at": rfc3339(float(r["died_at"]))} for r in records]
    next_cursor = records[-1]["died_at"] if len(records) == limit else None
    return json_response({"jobs": jobs, "next_cursor": next_cursor})


def query_queue(query: Mapping[str, str]) -> str | None:
    queue = query.get("queue") or None
    if queue is not None and not valid_queue_name(queue):
        raise ValidationError("queue: expected a queue name", 400)
    return queue


def query_number(raw: str | None, name: str, low: float, high: float) -> float:
    """A number query parameter (absent: 0)."""
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not low <= value <= high:
        raise ValidationError(f"{name}: expected a number of seconds from {low:g} to {high:g}", 400)
    return value


def query_int(raw: str, name: str, low: int, high: int) -> int:
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise ValidationError(f"{name}: expected an integer from {low} to {high}", 400)
    return int(raw)


async def redrive_one(request: web.Request) -> web.Response:
    job_id = request.match_info["id"]
    queue = request.app[QUEUE]
    where = await queue.locate(job_id) if valid_id(job_id) else None
    moved = await queue.redrive(where, [job_id]) if where else []
    if not moved:
        return error(404, f"id: no dead job {job_id[:64]!r}")
    request.app[LOG].emit("redriven", job_id=job_id, queue=where)
    return json_response({"id": job_id, "status": "queued", "queue": where}, 202, {"Location": f"/jobs/{job_id}"})


async def redrive_many(request: web.Request) -> web.Response:
    """Re-drive dead jobs matching ?queue=&type= (all of them by default), up to ?limit= (1000)."""
    query = request.query
    queue_name = query_queue(query)
    limit = query_int(query.get("limit", "1000"), "limit", 1, 10000)
    queue = request.app[QUEUE]
    records = await queue.dead(queue_name, query.get("type") or None, limit, None)
    by_queue: dict[str, list[str]] = {}
    for record in records:
        by_queue.setdefault(record["queue"], []).append(record["id"])
    moved = [job_id for q, ids in by_queue.items() for job_id in await queue.redrive(q, ids)]
    request.app[LOG].emit("redriven", jobs=len(moved), queue=queue_name, type=query.get("type"))
    return json_response({"redriven": len(moved), "ids": moved}, 202)


async def drop_dead(request: web.Request) -> web.Response:
    job_id = request.match_info["id"]
    queue = request.app[QUEUE]
    where = await queue.locate(job_id) if valid_id(job_id) else None
    if where is None or not await queue.drop_dead(where, job_id):
        return error(404, f"id: no dead job {job_id[:64]!r}")
    return json_response({"id": job_id, "deleted": True})


async def metrics(request: web.Request) -> web.Response:
    queue = request.app[QUEUE]
    per_queue = await queue.stats()
    prometheus, openmetrics = wants_prometheus(request.headers.get("Accept", ""))
    if prometheus:
        snapshot = {"queues": per_queue, "workers": len(await queue.workers())}
        body, content_type = request.app[METRICS].exposition(snapshot, openmetrics)
        return web.Response(body=body, headers={"Content-Type": content_type})

    def total(field: str) -> int:
        return sum(int(row[field]) for row in per_queue.values())

    for name, row in per_queue.items():
        row["timings"] = timing_summary(await queue.timings(name))
    return json_response(
        {
            # The Go service's three keys, unchanged.
            "total_jobs_in_queue": total("waiting"),
            "jobs_done": total("done"),
            "jobs_failed": total("failed"),
            "jobs_active": total("active"),
            "jobs_scheduled": total("scheduled"),
            "jobs_dead": total("dead"),
            "jobs_enqueued": total("enqueued"),
            "jobs_retried": total("retried"),
            "jobs_recovered": total("recovered"),
            "jobs_cancelled": total("cancelled"),
            "queues": per_queue,
        }
    )


async def workers(request: web.Request) -> web.Response:
    """The live worker processes, from the heartbeats crash recovery relies on."""
    live = await request.app[QUEUE].workers()
    for w in live:
        w["started_at"] = rfc3339(w["started_at"])
        w["last_heartbeat"] = rfc3339(w["last_heartbeat"])
    return json_response({"workers": live, "count": len(live)})


async def openapi(request: web.Request) -> web.Response:
    return json_response(document(request.app[SETTINGS], request.app[TASKS]))


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        async with asyncio.timeout(request.app[SETTINGS].redis_timeout):
            inspection = await request.app[QUEUE].inspect()
    except (TimeoutError, StoreError):
        return error(503, "redis: unreachable", {"Retry-After": "1"})
    risks = inspection.risks()
    return json_response({"status": "ready", "warnings": risks} if risks else {"status": "ready"})


def add_routes(app: web.Application, settings: Settings) -> None:
    if settings.runs_producer:
        app.router.add_post("/enqueue", enqueue)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/workers", workers)
    app.router.add_get("/queues", list_queues)
    app.router.add_get("/jobs", list_jobs)
    app.router.add_get("/jobs/{id}", get_job)
    app.router.add_post("/jobs/{id}/cancel", cancel_job)
    app.router.add_delete("/jobs/{id}", cancel_job)
    app.router.add_get("/dead", list_dead)
    app.router.add_post("/dead/retry", redrive_many)
    app.router.add_post("/dead/{id}/retry", redrive_one)
    app.router.add_delete("/dead/{id}", drop_dead)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
