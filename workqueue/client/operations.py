"""Every client operation once, without I/O: what to send, when to retry and sleep, how to read the
answer. `Client` and `AsyncClient` differ only in how they carry the steps out.

An operation is a generator. It yields a `Send` (a request) or a `Sleep` and is resumed with what
came of it: the `httpx.Response`, the `httpx.TransportError` the send raised, or None after a sleep.
It returns the typed result, or raises `APIError`, `ServiceUnreachable` or `TimeoutError`. Keeping
the retry loop and `wait`'s polling in here, rather than in each client, is what makes the blocking
and the asyncio client behave the same (the sans-I/O style of h11 and h2).
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar
from urllib.parse import quote

import httpx

from ..errors import APIError, ServiceUnreachable
from .results import Cancellation, Enqueued, Job, Page, QueueInfo, Worker

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8080"
MAX_WAIT = 60  # the most seconds GET /jobs/{id}?wait= may ask for (DESIGN section 12)
BACKOFF_BASE, BACKOFF_MAX = 0.5, 10.0
RETRY_AFTER_MAX = 60.0  # a Retry-After beyond this is taken as this: the caller asked for a bounded call
POLL_FIRST, POLL_MAX = 0.05, 0.5  # polling a server without ?wait: short sleeps that grow


@dataclass(frozen=True, slots=True)
class Send:
    """Send `request`; `repeatable` when sending it twice does no harm (a read, an enqueue with its
    idempotency key), so it may be retried after a failure that may have reached the service."""

    request: httpx.Request
    repeatable: bool


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


Step: TypeAlias = Send | Sleep
Reply: TypeAlias = httpx.Response | httpx.TransportError | None
Operation: TypeAlias = Generator[Step, Reply, T]

# Failures of a request that never reached the service: always safe to try again.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Failures after the request may have reached it (the answer was lost): safe only for repeatable ones.
MAYBE_SENT = (httpx.ReadError, httpx.WriteError, httpx.ReadTimeout, httpx.WriteTimeout,
              httpx.RemoteProtocolError, httpx.CloseError)


def backoff(attempt: int) -> float:
    """Before try `attempt` + 1: between half and all of min(max, base * 2^(attempt-1)) seconds, the
    jitter spreading the retries of many clients that failed together (as the service's job retries)."""
    ceiling = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1))
    return random.uniform(ceiling / 2, ceiling)


def retry_after(response: httpx.Response) -> float | None:
    """The Retry-After header in seconds (the form the service sends), None when absent or a date."""
    value = response.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_MAX) if seconds == seconds else None


def error_message(response: httpx.Response) -> str:
    """The answer's `error` field; for a body that is not the API's (a proxy's page), its start."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    text = " ".join(response.text.split())[:200]
    return text or response.reason_phrase or "no error message"


def has_key(job: Mapping[str, Any]) -> bool:
    # Field names are case-insensitive in the API: "Key" is a key too.
    return any(str(name).lower() == "key" and value not in (None, "") for name, value in job.items())


def segment(value: str) -> str:
    """One path segment: an id or queue name given by a person may hold '/' or '?'."""
    return quote(value, safe="")


class Operations:
    """The operations of one client: its URL, token, per-request timeout and retry budget."""

    def __init__(self, url: str, token: str | None, timeout: float, retries: int) -> None:
        base = httpx.URL(url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"url: expected http://host:port or https://host:port, got {url!r}")
        if retries < 0:
            raise ValueError(f"retries: expected an integer >= 0, got {retries!r}")
        if timeout <= 0:
            raise ValueError(f"timeout: expected seconds > 0, got {timeout!r}")
        self.url = str(base).rstrip("/")
        self.timeout = float(timeout)
        self.retries = retries
        self.headers = {"Accept": "application/json", "User-Agent": "workqueue-client"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    # -- the plumbing every operation shares ----------------------------------------------------

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, json: Any = None,
                headers: Mapping[str, str] | None = None, longer: float = 0.0) -> httpx.Request:
        """An absolute request with the client's headers and timeout (`longer`: seconds the service
        may legitimately take on top, as a ?wait does)."""
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        timeout = httpx.Timeout(self.timeout, read=self.timeout + longer)
        return httpx.Request(method, self.url + path, params=query, json=json,
                             headers={**self.headers, **(headers or {})},
                             extensions={"timeout": timeout.as_dict()})

    def exchange(self, request: httpx.Request, repeatable: bool) -> Generator[Step, Reply, httpx.Response]:
        """Send `request` until it gets an answer, retrying connection failures and 503s up to
        `retries` times; any other error status raises APIError at once."""
        attempt = 0
        while True:
            attempt += 1
            reply = yield Send(request, repeatable)
            spent = attempt > self.retries
            if isinstance(reply, httpx.TransportError):
                retryable = isinstance(reply, NOT_SENT) or (repeatable and isinstance(reply, MAYBE_SENT))
                if spent or not retryable:
                    tries = f" (after {attempt} tries)" if attempt > 1 else ""
                    raise ServiceUnreachable(f"{request.method} {request.url}: {describe(reply)}{tries}") from reply
                yield Sleep(backoff(attempt))
                continue
            assert isinstance(reply, httpx.Response), "a Send is answered with a response or a transport error"
            if reply.status_code == 503 and not spent:
                # 503 is the service saying "nothing was done, try again" (Redis unreachable or
                # full, a queue at its max_length); Retry-After says when.
                yield Sleep(retry_after(reply) or backoff(attempt))
                continue
            if reply.status_code >= 400:
                raise APIError(reply.status_code, error_message(reply))
            return reply

    def call(self, method: str, path: str, read: Callable[[Any], T], *, repeatable: bool,
             params: Mapping[str, Any] | None = None, json: Any = None, headers: Mapping[str, str] | None = None,
             longer: float = 0.0) -> Operation[T]:
        """One request, its JSON answer read by `read`. An answer that lacks what the route promises
        (a service too old or too new for this client) is an APIError that says so, not a KeyError
        from inside the client."""
        request = self.request(method, path, params=params, json=json, headers=headers, longer=longer)
        response = yield from self.exchange(request, repeatable)
        try:
            return read(response.json())
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise APIError(response.status_code, f"{method} {request.url.path}: unexpected answer "
                           f"({type(e).__name__}: {e})") from e

    # -- the operations ---------------------------------------------------------------------------

    def enqueue(self, type: str, payload: Mapping[str, Any], *, queue: str | None, delay: float | None,
                key: str | None, retries: int | None, priority: int | None, group: str | None,
                depends_on: Iterable[str] | None) -> Operation[Enqueued]:
        job: dict[str, Any] = {"type": type, "payload": dict(payload)}
        options = {"queue": queue, "delay": delay, "retries": retries, "priority": priority, "group": group,
                   "depends_on": list(depends_on) if depends_on is not None else None}
        job.update({name: value for name, value in options.items() if value is not None})
        # The same key on every try: a request whose answer was lost and is sent again finds the job
        # the first try made instead of making a second one.
        headers = {"Idempotency-Key": key or uuid.uuid4().hex}
        return (yield from self.call("POST", "/enqueue", Enqueued.from_json, json=job, headers=headers,
                                     repeatable=True))

    def enqueue_many(self, jobs: Iterable[Mapping[str, Any]]) -> Operation[list[Enqueued]]:
        # The service refuses the Idempotency-Key header with an array, so each job carries its own.
        keyed = [dict(job) if has_key(job) else {**job, "key": uuid.uuid4().hex} for job in jobs]
        if not keyed:
            return []
        return (yield from self.call("POST", "/enqueue", lambda a: [Enqueued.from_json(j) for j in a], json=keyed,
                                     repeatable=True))

    def get(self, job_id: str, wait: int = 0) -> Operation[Job]:
        params = {"wait": wait} if wait else None
        return (yield from self.call("GET", f"/jobs/{segment(job_id)}", Job.from_json, params=params, longer=wait,
                                     repeatable=True))

    def wait(self, job_id: str, timeout: float) -> Operation[Job]:
        """The job once it has ended; TimeoutError if it has not within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        server_waits = True  # until the service shows it ignores ?wait
        pause = POLL_FIRST
        while True:
            remaining = deadline - time.monotonic()
            # ?wait takes whole seconds: under one second left, a plain read and a short sleep.
            seconds = min(MAX_WAIT, int(remaining)) if server_waits and remaining >= 1 else 0
            began = time.monotonic()
            job = yield from self.get(job_id, seconds)
            if job.finished:
                return job
            if seconds and time.monotonic() - began < seconds / 2:
                # A service that knows ?wait holds a running job's answer until the wait ran out;
                # this one answered at once, so it is older and ignores the parameter: poll it.
                server_waits = False
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"job {job_id} has not finished within {timeout:g} s (it is {job.status})")
            if not (seconds and server_waits):
                yield Sleep(min(pause, remaining))
                pause = min(pause * 2, POLL_MAX)

    def cancel(self, job_id: str) -> Operation[Cancellation]:
        # Not repeatable: sent again after a lost answer, a cancel that worked would answer 409.
        return (yield from self.call("POST", f"/jobs/{segment(job_id)}/cancel", Cancellation.from_json,
                                     repeatable=False))

    def jobs(self, queue: str, status: str, type: str | None, limit: int, cursor: str | None) -> Operation[Page]:
        params = {"queue": queue, "status": status, "type": type, "limit": limit, "cursor": cursor}
        return (yield from self.call("GET", "/jobs", Page.from_json, params=params, repeatable=True))

    def dead(self, queue: str | None, type: str | None, limit: int, cursor: str | None) -> Operation[Page]:
        params = {"queue": queue, "type": type, "limit": limit, "cursor": cursor}
        return (yield from self.call("GET", "/dead", Page.from_json, params=params, repeatable=True))

    def retry_dead(self, job_id: str | None, queue: str | None, type: str | None,
                   limit: int | None) -> Operation[list[str]]:
        # Neither form is repeatable: sent again after a lost answer, a re-drive that worked is a 404
        # (one job), or re-drives jobs that died again meanwhile (many).
        if job_id is not None:
            if queue is not None or type is not None or limit is not None:
                raise ValueError("retry_dead: give a job id, or queue/type/limit to re-drive many, not both")
            return (yield from self.call("POST", f"/dead/{segment(job_id)}/retry", lambda a: [str(a["id"])],
                                         repeatable=False))
        params = {"queue": queue, "type": type, "limit": limit}
        return (yield from self.call("POST", "/dead/retry", lambda a: [str(i) for i in a["ids"]], params=params,
                                     repeatable=False))

    def delete_dead(self, job_id: str) -> Operation[None]:
        yield from self.call("DELETE", f"/dead/{segment(job_id)}", ignore, repeatable=False)

    def queues(self) -> Operation[list[QueueInfo]]:
        return (yield from self.call("GET", "/queues", lambda a: [QueueInfo.from_json(q) for q in a["queues"]],
                                     repeatable=True))

    def pause(self, queue: str, paused: bool) -> Operation[None]:
        # Pausing a paused queue (or resuming a running one) changes nothing: safe to send again.
        verb = "pause" if paused else "resume"
        yield from self.call("POST", f"/queues/{segment(queue)}/{verb}", ignore, repeatable=True)

    def workers(self) -> Operation[list[Worker]]:
        return (yield from self.call("GET", "/workers", lambda a: [Worker.from_json(w) for w in a["workers"]],
                                     repeatable=True))

    def metrics(self) -> Operation[dict[str, Any]]:
        return (yield from self.call("GET", "/metrics", as_object, repeatable=True))


def ignore(answer: Any) -> None:
    """For operations whose answer says nothing the caller does not know."""


def as_object(answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise TypeError(f"expected a JSON object, got {type(answer).__name__}")
    return answer


def describe(error: httpx.TransportError) -> str:
    """A transport error in a few words (some httpx errors have an empty message)."""
    if isinstance(error, httpx.ConnectError):
        what = "cannot connect"
    elif isinstance(error, httpx.TimeoutException):
        what = "no answer in time"
    else:
        what = "connection failed"
    return f"{what} ({str(error) or type(error).__name__})"
