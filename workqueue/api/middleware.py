"""What every request goes through: an id, timing and counting, the bearer token, and the one
place errors become JSON answers (a ValidationError its 4xx, an unavailable Redis a 503 with
Retry-After, anything unexpected a 500 without a traceback).
"""

from __future__ import annotations

import hmac
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from ..errors import QueueFull, ReplicaUnconfirmed, StoreOutOfMemory, StoreUnavailable, ValidationError
from .state import LOG, METRICS, REQUEST_ID

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


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
    except StoreOutOfMemory:
        return error(503, "the job store (Redis) is out of memory (maxmemory reached); nothing was done, try "
                     "again once jobs have drained or Redis has more memory", {"Retry-After": "5"})
    except ReplicaUnconfirmed as e:  # the write may have happened: the message says to retry with the key
        return error(503, str(e), {"Retry-After": "1"})
    except StoreUnavailable:
        return error(503, "the job store (Redis) is unavailable; nothing was done, try again", {"Retry-After": "1"})
    except QueueFull as e:
        return error(503, str(e), {"Retry-After": "5"})
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error(e.status, e.reason, {k: v for k, v in e.headers.items() if k == "Allow"})
    except Exception as e:  # the client gets a message, the log gets the details
        request.app[LOG].emit("http_error", "error", path=request.path, error=f"{type(e).__name__}: {e}")
        return error(500, "internal error; see the service log")


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give each request an id (the client's X-Request-Id if sane), time it, count it, log it."""
    given = request.headers.get("X-Request-Id", "")
    request_id = given if SAFE_REQUEST_ID.match(given) else os.urandom(8).hex()
    request[REQUEST_ID] = request_id
    began = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = request_id
        return response
    except web.HTTPException as e:
        status = e.status
        raise
    finally:
        elapsed = time.perf_counter() - began
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        method = request.method if request.method in METHODS else "other"  # a bounded label
        request.app[METRICS].observe_request(route, method, status, elapsed)
        request.app[LOG].emit("http_request", request_id=request_id, method=method, route=route,
                              status=status, duration_ms=round(elapsed * 1000, 2))


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
