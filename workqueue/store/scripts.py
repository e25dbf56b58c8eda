"""The Lua scripts: each atomic transition of a job is one script in `lua/<name>.lua`.

A script is loaded once, with the includes it names (`-- include: keys, bury`, from `lua/include/`)
and a preamble of the names the Python side owns: `STATUS`, `VERDICT` and `TALLY` (from
`workqueue.job`), `GROUP` and `LEVELS` (from `store.keys`), so no script spells a status itself.
Each script is called through one typed wrapper here: a dataclass in, a decoded reply out, so its
positional KEYS and ARGV are packed in one place and its reply is unpacked in one place. A script's
header names its KEYS and ARGV one per line (`-- KEYS[1] stats  the queue's counters`); the wrapper
lists the same names, and a contract test (tests/store/test_scripts.py) holds the two together.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import orjson
from redis.exceptions import NoScriptError

from ..errors import QueueFull, ValidationError
from ..job import Job, JobSpec, Outcome, Status, Tally, Verdict
from .connection import Connections, load_script, script_then_wait
from .keys import GROUP, LEVELS, QueueKeys

LUA = resources.files(__package__).joinpath("lua")
INCLUDE = re.compile(r"^-- include: (.+)$", re.M)


@dataclass(frozen=True, slots=True)
class Retention:
    """How long finished things are kept, and how much of them."""

    result_ttl: float
    dead_ttl: float
    dead_max: int
    key_ttl: float
    history_max: int = 10_000  # ids of ended jobs kept per queue and status, for GET /jobs
    packed: bytes = field(init=False, repr=False, compare=False)  # the `retention` ARGV of scripts

    def __post_init__(self) -> None:
        object.__setattr__(self, "packed", orjson.dumps([ms(self.result_ttl), ms(self.dead_ttl), self.dead_max,
                                                         ms(self.key_ttl), self.history_max]))


def ms(seconds: float) -> int:
    return int(seconds * 1000)


# -- loading ------------------------------------------------------------------------------------


def preamble() -> str:
    def table(name: str, items: dict[str, Any]) -> str:
        return f"local {name} = {{" + ", ".join(f"{k} = {orjson.dumps(v).decode()}" for k, v in items.items()) + "}"

    return "\n".join([
        table("STATUS", {s.name: s.value for s in Status}),
        table("VERDICT", {v.name: int(v) for v in Verdict}),
        table("TALLY", {t.name: t.value for t in Tally}),
        f"local GROUP = {orjson.dumps(GROUP).decode()}",
        f"local LEVELS = {LEVELS}",
    ])


def includes(text: str) -> list[str]:
    """The includes a script names, with theirs first, each once."""
    out: list[str] = []
    for line in INCLUDE.findall(text):
        for name in (n.strip() for n in line.split(",")):
            for needed in [*includes(LUA.joinpath(f"include/{name}.lua").read_text()), name]:
                if needed not in out:
                    out.append(needed)
    return out


@cache
def source(name: str, embedded: bool = False) -> str:
    """The text Redis runs for `lua/<name>.lua`: a `#!lua` line first (Redis reads script flags
    there), then the preamble, the includes and the script. The embedded store (fakeredis) cannot
    read that first line, so for it the line becomes a comment."""
    body = LUA.joinpath(f"{name}.lua").read_text()
    shebang = ""
    if body.startswith("#!"):
        shebang, _, body = body.partition("\n")
        shebang = ("-- " if embedded else "") + shebang + "\n"
    parts = [preamble(), *(LUA.joinpath(f"include/{n}.lua").read_text() for n in includes(body)), body]
    return shebang + "\n".join(parts)


# -- the wrappers -------------------------------------------------------------------------------

CallT = TypeVar("CallT")
ReplyT = TypeVar("ReplyT")


class Script(Generic[CallT, ReplyT]):
    """One script, run by EVALSHA and loaded again wherever Redis lost it (a restart, or a replica
    promoted with an empty script cache). Subclasses name their KEYS and ARGV as the script's
    header does."""

    NAME: ClassVar[str]
    KEYS: ClassVar[tuple[str, ...]]
    ARGV: ClassVar[tuple[str, ...]]

    def __init__(self, connections: Connections) -> None:
        self.connections = connections
        self.source = source(self.NAME, connections.embedded)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def pack(self, call: CallT) -> tuple[list[str], list[Any]]:
        raise NotImplementedError

    def unpack(self, reply: Any, call: CallT) -> ReplyT:
        raise NotImplementedError

    async def __call__(self, call: CallT) -> ReplyT:
        keys, args = self.pack(call)
        client = self.connections.main
        try:
            reply = await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await load_script(self.connections, self.source)
            reply = await client.evalsha(self.sha, len(keys), *keys, *args)
        return self.unpack(reply, call)

    async def replicated(self, call: CallT, wait_ms: int) -> tuple[ReplyT, int]:
        """The same call, followed by a WAIT for one replica on its connection: (reply, replicas
        that confirmed it)."""
        keys, args = self.pack(call)
        reply, acked = await script_then_wait(self.connections, self.sha, self.source, keys, args, wait_ms)
        return self.unpack(reply, call), acked


@dataclass(frozen=True, slots=True)
class Enqueued:
    id: str
    status: str  # 'queued' or 'scheduled' (or, for an existing job, whatever it is now)
    created: bool  # False when an idempotency key named an existing job
    spec: JobSpec


def fingerprint(spec: JobSpec) -> str:
    return hashlib.sha256(orjson.dumps([spec.type, spec.payload], option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class EnqueueCall:
    keys: QueueKeys
    requests: Sequence[Sequence[tuple[str, JobSpec]]]  # per request, (new id, spec) per job
    max_length: int = 0  # 0: no limit
    dry_run: bool = False


class EnqueueScript(Script[EnqueueCall, list[list[Enqueued] | Exception]]):
    """Per request, its jobs, or the error that refused it whole."""

    NAME = "enqueue"
    KEYS = ("stats", "scheduled")
    ARGV = ("queue", "prefix", "max_length", "dry_run", "requests")

    def pack(self, call: EnqueueCall) -> tuple[list[str], list[Any]]:
        k, now = call.keys, time.time()
        requests = [
            [[job_id, s.type, orjson.dumps(s.payload).decode(), s.retries, s.timeout, s.priority,
              math.ceil(s.run_at * 1000) if s.run_at is not None and s.run_at > now else 0,  # never early
              k.idempotency(s.key) if s.key else "", fingerprint(s) if s.key else "", ms(s.key_ttl or 0),
              *((s.trace,) if s.trace else ())]  # the trace context only when there is one
             for job_id, s in jobs]
            for jobs in call.requests
        ]
        return [k.stats, k.scheduled], [k.queue, k.prefix, call.max_length, "1" if call.dry_run else "0",
                                        orjson.dumps(requests)]

    def unpack(self, reply: Any, call: EnqueueCall) -> list[list[Enqueued] | Exception]:
        out: list[list[Enqueued] | Exception] = []
        for jobs, answer in zip(call.requests, reply):
            verdict = answer[0].decode()
            if verdict == "conflict":
                index, existing = int(answer[1]) - 1, answer[2].decode()
                out.append(ValidationError(
                    f"key: idempotency key {jobs[index][1].key!r} already belongs to job {existing}, "
                    "which has a different type or payload", 409))
            elif verdict == "full":
                out.append(QueueFull(f"queue {call.keys.queue!r} is at its maximum length ({call.max_length}); "
                                     "try again later"))
            elif call.dry_run:
                out.append([])
            else:
                rows = answer[1:]
                out.append([Enqueued(rows[i * 3].decode(), rows[i * 3 + 1].decode(), bool(int(rows[i * 3 + 2])), spec)
                            for i, (_, spec) in enumerate(jobs)])
        return out


@dataclass(frozen=True, slots=True)
class FetchCall:
    keys: QueueKeys
    consumer: str
    count: int
    retention: Retention
    lowest_first: bool = False


class Fetched(NamedTuple):
    jobs: list[Job]
    cursors: list[str]  # when no job came: per level, highest first, where `wait` watches from
    buried: list[str]  # ids of poison jobs made dead instead of delivered


class FetchScript(Script[FetchCall, Fetched]):
    NAME = "fetch"
    KEYS = ("stats", "dead")
    ARGV = ("prefix", "consumer", "count", "order", "retention")

    def pack(self, call: FetchCall) -> tuple[list[str], list[Any]]:
        k = call.keys
        return [k.stats, k.dead], [k.prefix, call.consumer, call.count, "low" if call.lowest_first else "high",
                                   call.retention.packed]

    def unpack(self, reply: Any, call: FetchCall) -> Fetched:
        flat, cursors, buried = reply
        queue = call.keys.queue
        jobs = []
        for i in range(0, len(flat), 11):
            job_id, delivery, level, task_type, payload, retries, attempts, timeout, due_at, priority, trace = \
                flat[i : i + 11]
            jobs.append(Job(id=job_id.decode(), delivery=delivery.decode(), level=int(level), type=task_type.decode(),
                            queue=queue, payload=orjson.loads(payload), retries=int(retries), attempts=int(attempts),
                            timeout=float(timeout), due_at=float(due_at), priority=int(priority or 0),
                            trace=trace.decode() if trace else None))
        return Fetched(jobs, [c.decode() for c in cursors], [b.decode() for b in buried])


@dataclass(frozen=True, slots=True)
class FinishCall:
    keys: QueueKeys
    outcomes: Sequence[Outcome]
    retention: Retention
    window: int  # recent timings kept for the JSON percentiles


class FinishScript(Script[FinishCall, list[Verdict]]):
    NAME = "finish"
    KEYS = ("stats", "scheduled", "dead", "timings")
    ARGV = ("prefix", "retention", "window", "outcomes")

    def pack(self, call: FinishCall) -> tuple[list[str], list[Any]]:
        k = call.keys
        outcomes = [(o.job.id, o.job.delivery, o.status, o.data, ms(o.retry_at), o.job.type, o.job.level,
                     round(o.wait * 1000, 1), round(o.run * 1000, 1)) for o in call.outcomes]
        return [k.stats, k.scheduled, k.dead, k.timings], [k.prefix, call.retention.packed, call.window,
                                                           orjson.dumps(outcomes)]

    def unpack(self, reply: Any, call: FinishCall) -> list[Verdict]:
        return [Verdict(int(v)) for v in reply]


@dataclass(frozen=True, slots=True)
class PromoteCall:
    keys: QueueKeys
    now: float  # epoch seconds: jobs due by then move
    limit: int = 1000


class PromoteScript(Script[PromoteCall, tuple[int, float | None]]):
    """(jobs moved, epoch seconds of the next scheduled job or None)."""

    NAME = "promote"
    KEYS = ("scheduled",)
    ARGV = ("prefix", "now", "limit")

    def pack(self, call: PromoteCall) -> tuple[list[str], list[Any]]:
        return [call.keys.scheduled], [call.keys.prefix, ms(call.now), call.limit]

    def unpack(self, reply: Any, call: PromoteCall) -> tuple[int, float | None]:
        moved, next_ms = int(reply[0]), float(reply[1])
        return moved, (next_ms / 1000 if next_ms >= 0 else None)


@dataclass(frozen=True, slots=True)
class RecoverCall:
    keys: QueueKeys
    consumer: str  # the worker asking
    mode: str = "reap"  # 'reap' dead workers' deliveries, 'release' its own, or its own 'orphans'
    limit: int = 1000
    held: Sequence[tuple[int, str]] = ()  # for 'orphans': (level, delivery) the worker holds
    idle: float = 0.0  # for 'orphans': seconds a delivery must have been pending


class RecoverScript(Script[RecoverCall, tuple[int, list[str]]]):
    """(jobs requeued, names of the dead workers reaped)."""

    NAME = "recover"
    KEYS = ("stats",)
    ARGV = ("prefix", "consumer", "limit", "mode", "held", "idle")

    def pack(self, call: RecoverCall) -> tuple[list[str], list[Any]]:
        held = orjson.dumps([f"{level}:{delivery}" for level, delivery in call.held])
        return [call.keys.stats], [call.keys.prefix, call.consumer, call.limit, call.mode, held, ms(call.idle)]

    def unpack(self, reply: Any, call: RecoverCall) -> tuple[int, list[str]]:
        return int(reply[0]), [n.decode() for n in reply[1:]]


@dataclass(frozen=True, slots=True)
class CancelCall:
    keys: QueueKeys
    job_id: str
    retention: Retention


class CancelScript(Script[CancelCall, tuple[str, str] | None]):
    """(status before, status now), or None for an unknown job."""

    NAME = "cancel"
    KEYS = ("job", "scheduled", "stats", "cancels")
    ARGV = ("prefix", "id", "retention")

    def pack(self, call: CancelCall) -> tuple[list[str], list[Any]]:
        k = call.keys
        return [k.job(call.job_id), k.scheduled, k.stats, k.cancels], [k.prefix, call.job_id, call.retention.packed]

    def unpack(self, reply: Any, call: CancelCall) -> tuple[str, str] | None:
        before, after = reply
        return None if before is None else (before.decode(), after.decode())


@dataclass(frozen=True, slots=True)
class RedriveCall:
    keys: QueueKeys
    ids: Sequence[str]


class RedriveScript(Script[RedriveCall, list[str]]):
    """The ids sent back to their queue (those no longer dead are skipped)."""

    NAME = "redrive"
    KEYS = ("dead", "stats")
    ARGV = ("prefix", "ids")

    def pack(self, call: RedriveCall) -> tuple[list[str], list[Any]]:
        return [call.keys.dead, call.keys.stats], [call.keys.prefix, orjson.dumps(list(call.ids))]

    def unpack(self, reply: Any, call: RedriveCall) -> list[str]:
        return [m.decode() for m in reply]


@dataclass(frozen=True, slots=True)
class StatsCall:
    keys: QueueKeys
    dead_ttl: float


COUNTERS = tuple(t.value for t in (Tally.ENQUEUED, Tally.DONE, Tally.FAILED, Tally.RETRIED, Tally.RECOVERED,
                                   Tally.RELEASED, Tally.CANCELLED, Tally.REDRIVEN))


class StatsScript(Script[StatsCall, dict[str, Any]]):
    """Counts by state, the age of the oldest waiting job, the queue's counters and per task type
    `types: {type: {tally: n}}`."""

    NAME = "stats"
    KEYS = ("scheduled", "dead", "stats")
    ARGV = ("prefix", "dead_ttl")

    def pack(self, call: StatsCall) -> tuple[list[str], list[Any]]:
        k = call.keys
        return [k.scheduled, k.dead, k.stats], [k.prefix, ms(call.dead_ttl)]

    def unpack(self, reply: Any, call: StatsCall) -> dict[str, Any]:
        row: dict[str, Any] = dict(zip(("waiting", "active", "scheduled", "dead"), (int(v) for v in reply[:4])))
        oldest = int(reply[4])
        row["oldest_waiting_age_seconds"] = round(max(0.0, time.time() - oldest / 1000), 3) if oldest >= 0 else 0.0
        counters = {reply[i].decode(): int(reply[i + 1]) for i in range(5, len(reply), 2)}
        for name in COUNTERS:
            row[name] = counters.get(name, 0)
        by_type: dict[str, dict[str, int]] = {}
        for name, n in counters.items():
            tally, sep, task_type = name.partition("|")
            if sep:
                by_type.setdefault(task_type, {})[tally] = n
        row["types"] = by_type
        return row


@dataclass(frozen=True, slots=True)
class ListCall:
    keys: QueueKeys
    status: str
    task_type: str | None
    limit: int
    cursor: str | None


class ListScript(Script[ListCall, tuple[list[str], str | None]]):
    """(job ids of the page, the cursor of the next page or None)."""

    NAME = "list"
    KEYS = ("scheduled", "dead")
    ARGV = ("prefix", "status", "type", "limit", "cursor")

    def pack(self, call: ListCall) -> tuple[list[str], list[Any]]:
        k = call.keys
        return [k.scheduled, k.dead], [k.prefix, call.status, call.task_type or "", call.limit, call.cursor or ""]

    def unpack(self, reply: Any, call: ListCall) -> tuple[list[str], str | None]:
        cursor = reply[0].decode()
        return [i.decode() for i in reply[1:]], cursor or None


@dataclass(slots=True)
class Scripts:
    """Every script, on one set of connections."""

    enqueue: EnqueueScript
    fetch: FetchScript
    finish: FinishScript
    promote: PromoteScript
    recover: RecoverScript
    cancel: CancelScript
    redrive: RedriveScript
    stats: StatsScript
    list: ListScript

    @classmethod
    def register(cls, connections: Connections) -> Scripts:
        return cls(EnqueueScript(connections), FetchScript(connections), FinishScript(connections),
                   PromoteScript(connections), RecoverScript(connections), CancelScript(connections),
                   RedriveScript(connections), StatsScript(connections), ListScript(connections))


WRAPPERS: tuple[type[Script[Any, Any]], ...] = (EnqueueScript, FetchScript, FinishScript, PromoteScript,
                                                RecoverScript, CancelScript, RedriveScript, StatsScript, ListScript)
