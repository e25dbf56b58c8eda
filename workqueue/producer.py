"""The HTTP API: POST /enqueue (producer role) and the read endpoints every role serves.

Errors are translated to JSON at one place, `error_middleware`: a ValidationError becomes its
4xx, an unreachable Redis a 503 with Retry-After, anything unexpected a 500 without a traceback.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from .config import Settings, valid_queue_name
from .connection import UNAVAILABLE
from .errors import StoreUnavailable, ValidationError
from .job import JobSpec, parse_specs, rfc3339, valid_id
from .logs import EventLog
from .plugins import TaskType
from .queue import Queue

SETTINGS = web.AppKey("settings", Settings)
QUEUE = web.AppKey("queue", Queue)
LOG = web.AppKey("log", EventLog)
TASKS = web.AppKey("tasks", dict[str, TaskType])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON_TYPES = ("application/json",)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers, content_type="application/json")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"error": message}, status, headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ValidationError as e:
        return error(e.status, str(e))
    except (StoreUnavailable, *UNAVAILABLE):
        return error(503, "the job store (Redis) is unavailable; nothing was done, try again", {"Retry-After": "1"})
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error(e.status, e.reason, {k: v for k, v in e.headers.items() if k == "Allow"})
    except Exception as e:  # the client gets a message, the log gets the details
        request.app[LOG].emit("http_error", "error", path=request.path, error=f"{type(e).__name__}: {e}")
        return error(500, "internal error; see the service log")


def auth_middleware(token: str) -> Any:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path != "/healthz":
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return error(401, "missing or wrong bearer token in Authorization", {"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return check_token


async def read_json(request: web.Request, limit: int) -> Any:
    """The decoded body, after the checks that need no parsing: content type, then size."""
    if "Content-Type" in request.headers and request.content_type not in JSON_TYPES and not request.content_type.endswith("+json"):
        raise ValidationError(f"Content-Type: expected application/json (got {request.content_type})", 415)
    if request.content_length is not None and request.content_length > limit:
        raise ValidationError(f"body: larger than the limit of {limit} bytes", 413)
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise ValidationError(f"body: larger than the limit of {limit} bytes", 413)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise ValidationError("body: empty; expected a JSON job object or an array of them", 400)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ValidationError(f"body: invalid JSON ({e})", 400) from e


async def enqueue(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    body = await read_json(request, settings.max_body_bytes)
    if isinstance(body, list) and len(body) > settings.max_batch:
        raise ValidationError(f"body: at most {settings.max_batch} jobs per request (got {len(body)})", 413)
    specs = parse_specs(body, request.app[TASKS], settings.default_retries, settings.default_timeout, valid_queue_name)
    ids = await request.app[QUEUE].enqueue(specs)
    log = request.app[LOG]
    answers = []
    for job_id, spec in zip(ids, specs):
        log.emit("enqueued", job_id=job_id, type=spec.type, queue=spec.queue, retries=spec.retries)
        answers.append(accepted(job_id, spec))
    if isinstance(body, list):
        return json_response(answers, 202)
    return json_response(answers[0], 202, {"Location": f"/jobs/{ids[0]}"})


def accepted(job_id: str, spec: JobSpec) -> dict[str, Any]:
    return {"id": job_id, "status": "queued", "type": spec.type, "queue": spec.queue}


async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["id"]
    record = await request.app[QUEUE].get_job(job_id) if valid_id(job_id) else None
    if record is None:
        return error(404, f"id: no job {job_id[:64]!r} (unknown, or expired after its result TTL)")
    return json_response(present(record))


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
        "enqueued_at": time_of("enqueued_at"),
        "started_at": time_of("started_at") if started else None,
        "finished_at": time_of("finished_at"),
        "payload": orjson.loads(record["payload"]),
        "result": orjson.loads(record["result"]) if "result" in record else None,
        "error": record.get("error"),
    }


async def metrics(request: web.Request) -> web.Response:
    per_queue = await request.app[QUEUE].stats()

    def total(field: str) -> int:
        return sum(row[field] for row in per_queue.values())

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
            "queues": per_queue,
        }
    )


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    try:
        await request.app[QUEUE].client.ping()
    except UNAVAILABLE:
        return error(503, "redis: unreachable", {"Retry-After": "1"})
    return json_response({"status": "ready"})


def add_routes(app: web.Application, settings: Settings) -> None:
    if settings.runs_producer:
        app.router.add_post("/enqueue", enqueue)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/jobs/{id}", get_job)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
