"""Fault injection against real `python -m workqueue` processes and real redis-servers (issue 7).

The oracle is a ledger kept outside Redis: the `nap`, `sleep` and `record` handlers append
"job_id attempt pid time" to a file when they complete. A job accepted (202) but never in the
ledger was lost; a job in the ledger twice from surviving processes ran twice.

Every test that restarts, stops or pauses Redis starts a redis-server of its own (never the shared
fixture server). Measured figures are printed (`-s`) and, with WORKQUEUE_FIGURES=<file>, appended
to that file as JSON lines: docs/RELIABILITY.md quotes them.

Tests marked `slow` (a 30-minute soak, a 1,000,000-job run) run only with `-m slow` or
WORKQUEUE_SLOW=1; WORKQUEUE_SOAK_SECONDS and WORKQUEUE_MILLION_JOBS scale them down.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.conftest import RedisServer, Service, stop_redis, wait_for
from tests.support import write_config
from tests.test_metrics import samples_of, value

# -- helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    job_id: str
    attempt: int
    pid: int
    at: float


def ledger(path: Path) -> list[Run]:
    if not path.exists():
        return []
    runs = []
    for line in path.read_text().split("\n")[:-1]:  # not a last line still being written
        job_id, attempt, pid, at = line.split()
        runs.append(Run(job_id, int(attempt), int(pid), float(at)))
    return runs


def completions(path: Path) -> dict[str, list[Run]]:
    by_job: dict[str, list[Run]] = {}
    for run in ledger(path):
        by_job.setdefault(run.job_id, []).append(run)
    return by_job


@dataclass
class Reply:
    status: int  # 0: no HTTP answer (connection refused, timeout)
    headers: dict[str, str]
    body: Any
    began: float  # epoch seconds
    seconds: float

    @property
    def ended(self) -> float:
        return self.began + self.seconds


def request(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
            timeout: float = 15.0) -> Reply:
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    began = time.time()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, got, raw = r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        status, got, raw = e.code, dict(e.headers), e.read()
    except (urllib.error.URLError, OSError) as e:
        return Reply(0, {}, str(e), began, time.time() - began)
    try:
        decoded = orjson.loads(raw)
    except orjson.JSONDecodeError:
        decoded = raw.decode(errors="replace")
    return Reply(status, got, decoded, began, time.time() - began)


def enqueue(service: Service, jobs: list[dict[str, Any]]) -> list[str]:
    reply = request("POST", f"{service.url}/enqueue", jobs)
    assert reply.status == 202, reply
    return [a["id"] for a in reply.body]


def metrics(service: Service) -> dict[str, Any]:
    reply = request("GET", f"{service.url}/metrics")
    assert reply.status == 200, reply
    return reply.body  # type: ignore[no-any-return]


def job(service: Service, job_id: str) -> dict[str, Any]:
    reply = request("GET", f"{service.url}/jobs/{job_id}")
    assert reply.status == 200, reply
    return reply.body  # type: ignore[no-any-return]


def log_lines(path: Path) -> list[dict[str, Any]]:
    """logs.txt of a running process: like conftest.read_log, but a last line still being written
    (no newline yet) is left for the next poll instead of failing to parse."""
    if not path.exists():
        return []
    complete = path.read_bytes().split(b"\n")[:-1]
    return [orjson.loads(line) for line in complete if line.strip()]


def events(service: Service, name: str) -> list[dict[str, Any]]:
    return [e for e in log_lines(service.log_path) if e["event"] == name]


def started(service: Service) -> dict[str, list[dict[str, Any]]]:
    """Job id -> the `started` events this process logged for it."""
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events(service, "started"):
        out.setdefault(e["job_id"], []).append(e)
    return out


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts).timestamp()


def alive(*processes: Service) -> bool:
    return all(p.process.poll() is None for p in processes)


def nap(ledger_path: Path, seconds: float, go: Path | None = None, **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"seconds": seconds, "ledger": str(ledger_path)}
    if go is not None:
        payload["go"] = str(go)
    return {"type": "nap", "payload": payload, **extra}


def record(ledger_path: Path, **extra: Any) -> dict[str, Any]:
    return {"type": "record", "payload": {"ledger": str(ledger_path)}, **extra}


class Load:
    """Threads posting small batches of `record` jobs to a producer until stopped; every reply kept."""

    def __init__(self, url: str, ledger_path: Path, threads: int = 4, batch: int = 5, pause: float = 0.0) -> None:
        self.url = url
        self.ledger_path = ledger_path
        self.batch = batch
        self.pause = pause  # between requests of one thread: a steady rate instead of flat out
        self.replies: list[Reply] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        while not self.stopping.is_set():
            reply = request("POST", f"{self.url}/enqueue", [record(self.ledger_path) for _ in range(self.batch)],
                            timeout=10)
            with self.lock:
                self.replies.append(reply)
            if reply.status != 202 or self.pause:
                time.sleep(max(self.pause, 0.02))  # a client's pacing, not synchronisation

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(15)

    def snapshot(self) -> list[Reply]:
        with self.lock:
            return list(self.replies)

    def accepted(self, replies: list[Reply] | None = None) -> list[str]:
        return [a["id"] for r in (replies if replies is not None else self.snapshot()) if r.status == 202
                for a in r.body]


def worker_args(config: Path, *extra: str) -> tuple[str, ...]:
    return ("--role", "worker", "--config", str(config), *extra)


# -- 1. SIGKILL with 200 jobs in flight ---------------------------------------------------------


@pytest.mark.timeout(120)
def test_sigkill_of_a_worker_holding_200_jobs_loses_none_and_duplicates_none(
    services: Any, redis_url: str, tmp_path: Path, figures: Callable[..., None]
) -> None:
    lease = 1.0
    config = write_config(tmp_path / "cfg", redis_url, lease=lease, grace_period=1.0)
    producer = services("producer", "--role", "producer", "--config", str(config))
    victim = services("victim", *worker_args(config, "--concurrency", "200"))
    producer.wait_ready()
    victim.wait_ready()
    book = tmp_path / "ledger.txt"
    go = tmp_path / "go"  # the jobs start their 1.5 s of sleep once this exists (after the kill)

    victims_jobs = set(enqueue(producer, [nap(book, 1.5, go) for _ in range(200)]))
    wait_for(lambda: set(started(victim)) == victims_jobs, 20, "the victim to start its 200 jobs")
    survivor = services("survivor", *worker_args(config, "--concurrency", "300")).wait_ready()
    survivors_jobs = set(enqueue(producer, [nap(book, 1.5, go) for _ in range(100)]))
    wait_for(lambda: set(started(survivor)) == survivors_jobs, 20, "the survivor to start its 100 jobs")
    assert not set(started(victim)) & survivors_jobs

    victim.signal(signal.SIGKILL)
    killed_at = time.time()
    go.touch()
    assert victim.wait(5) == -signal.SIGKILL

    everything = victims_jobs | survivors_jobs
    wait_for(lambda: set(completions(book)) == everything, 30, "every one of the 300 jobs to complete")
    wait_for(lambda: metrics(producer)["jobs_done"] == 300, 10, "jobs_done to reach 300")
    done = completions(book)
    lost = everything - set(done)
    duplicated = {j for j, runs in done.items() if len(runs) > 1}
    assert not lost and not duplicated
    assert all(runs[0].pid == survivor.process.pid for runs in done.values())
    assert all(done[j][0].attempt == 1 for j in survivors_jobs), "the survivor's own jobs ran once"
    assert all(done[j][0].attempt == 2 for j in victims_jobs)

    reruns = {j: epoch(e[0]["ts"]) for j, e in started(survivor).items() if j in victims_jobs}
    assert set(reruns) == victims_jobs
    first, last = min(reruns.values()) - killed_at, max(reruns.values()) - killed_at
    # The victim's lease runs out at most one lease after the kill, the reaper looks every lease/4.
    assert last < lease * 1.25 + 1.0, f"re-runs started {first:.2f}-{last:.2f} s after the kill"
    counts = metrics(producer)
    assert counts["jobs_recovered"] == 200 and counts["jobs_done"] == 300, counts
    assert counts["jobs_active"] == counts["total_jobs_in_queue"] == 0
    figures(scenario="worker SIGKILL, 200 in flight", lease=lease, jobs=300, lost=len(lost),
            duplicates=len(duplicated), recovery_first_s=round(first, 3), recovery_last_s=round(last, 3))


# -- 2. Zombie worker: paused past its lease, then resumed --------------------------------------


@pytest.mark.timeout(120)
def test_a_zombie_workers_late_outcomes_are_refused_and_its_handlers_cancelled(
    services: Any, redis_url: str, tmp_path: Path, figures: Callable[..., None]
) -> None:
    lease = 1.0
    config = write_config(tmp_path / "cfg", redis_url, lease=lease, grace_period=1.0)
    producer = services("producer", "--role", "producer", "--config", str(config))
    zombie = services("zombie", *worker_args(config, "--concurrency", "10"))
    producer.wait_ready()
    zombie.wait_ready()
    book = tmp_path / "ledger.txt"
    go = tmp_path / "go"
    # Coroutines (cancellable) and plain functions in threads (which cannot be interrupted).
    coroutines = enqueue(producer, [nap(book, 1.0, go) for _ in range(6)])
    threads = enqueue(producer, [{"type": "nap_thread", "payload": {"seconds": 2.5, "ledger": str(book)}}
                                 for _ in range(2)])
    ids = set(coroutines) | set(threads)
    wait_for(lambda: set(started(zombie)) == ids, 10, "the zombie to start all 8 jobs")
    taker = services("taker", *worker_args(config, "--concurrency", "10")).wait_ready()
    go.touch()

    zombie.signal(signal.SIGSTOP)
    stopped_at = time.time()
    wait_for(lambda: set(started(taker)) == ids, 10, "the taker to take over all 8 jobs")
    taken_after = max(epoch(e[0]["ts"]) for e in started(taker).values()) - stopped_at
    wait_for(lambda: metrics(producer)["jobs_done"] == 8, 15, "the taker to complete all 8 jobs")
    assert time.time() - stopped_at > lease
    zombie.signal(signal.SIGCONT)

    # The zombie notices it lost its lease, stops its handlers and holds nothing any more.
    wait_for(lambda: events(zombie, "lease_lost") or events(zombie, "stale_outcome_refused"), 10,
             "the zombie to log lease_lost or stale_outcome_refused")

    def zombie_in_flight() -> int | None:
        reply = request("GET", f"{zombie.url}/workers")
        if reply.status != 200:
            return None
        mine = [w for w in reply.body["workers"] if w["pid"] == zombie.process.pid]
        return mine[0]["in_flight"] if mine else None

    wait_for(lambda: zombie_in_flight() == 0, 10, "the zombie to hold no job")
    assert alive(zombie, taker, producer)

    for job_id in ids:
        record_ = job(producer, job_id)
        assert record_["status"] == "succeeded", record_
        assert record_["result"]["pid"] == taker.process.pid, record_  # the taker's result, not the zombie's
        assert record_["attempts"] == 2, record_
    succeeded = [e["job_id"] for s in (zombie, taker) for e in events(s, "succeeded")]
    assert sorted(succeeded) == sorted(ids), "exactly one recorded completion per job"
    counts = metrics(producer)
    assert counts["jobs_done"] == 8 and counts["jobs_recovered"] == 8, counts

    done = completions(book)
    assert all(len([r for r in done[j] if r.pid == taker.process.pid]) == 1 for j in ids)
    zombie_coroutine_runs = [r for j in coroutines for r in done[j] if r.pid == zombie.process.pid]
    zombie_thread_runs = [r for j in threads for r in done[j] if r.pid == zombie.process.pid]
    lease_lost = bool(events(zombie, "lease_lost"))
    figures(scenario="zombie worker (SIGSTOP past lease, SIGCONT)", lease=lease, jobs=8,
            recorded_completions=len(succeeded), takeover_s=round(taken_after, 3),
            zombie_async_handlers_finished=len(zombie_coroutine_runs),
            zombie_thread_handlers_finished=len(zombie_thread_runs),
            lease_lost_logged=lease_lost, stale_outcomes_refused=len(events(zombie, "stale_outcome_refused")))
    # A coroutine handler is cancelled as soon as the zombie runs again (it had 1 s of sleep left):
    # no completion from the zombie. A plain function in a thread cannot be stopped; its outcome is
    # refused, which the checks above prove.
    assert not zombie_coroutine_runs, (
        f"the zombie {'logged' if lease_lost else 'never logged'} lease_lost and finished "
        f"{len(zombie_coroutine_runs)} of its 6 coroutine handlers after SIGCONT")


# -- 3. A handler that blocks the event loop ----------------------------------------------------


@pytest.mark.timeout(90)
def test_a_handler_blocking_the_loop_does_not_get_its_processes_jobs_stolen(
    services: Any, redis_url: str, tmp_path: Path, figures: Callable[..., None]
) -> None:
    lease = 0.5
    config = write_config(tmp_path / "cfg", redis_url, lease=lease, grace_period=1.0)
    holder = services("holder", "--role", "both", "--config", str(config), "--concurrency", "10").wait_ready()
    book = tmp_path / "ledger.txt"
    go = tmp_path / "go"
    others = enqueue(holder, [nap(book, 0.5, go) for _ in range(5)])
    (hog,) = enqueue(holder, [{"type": "hog", "payload": {"seconds": 3 * lease, "go": str(go),
                                                          "ledger": str(book)}}])
    ids = {*others, hog}
    wait_for(lambda: set(started(holder)) == ids, 10, "the holder to start all 6 jobs")
    thief = services("thief", *worker_args(config)).wait_ready()
    go.touch()  # now the hog blocks the holder's loop for three leases

    wait_for(lambda: set(completions(book)) == ids, 15, "all 6 jobs to complete")
    done = completions(book)
    assert all(len(runs) == 1 and runs[0].pid == holder.process.pid and runs[0].attempt == 1
               for runs in done.values()), done
    counts = metrics(holder)
    assert counts["jobs_recovered"] == 0 and counts["jobs_done"] == 6, counts
    assert not started(thief), "no job may move to the other worker"
    assert not events(holder, "lease_lost")
    wait_for(lambda: events(holder, "event_loop_blocked"), 5, "event_loop_blocked in logs.txt")
    (blocked,) = events(holder, "event_loop_blocked")
    plugin = next(e["plugin"] for e in events(holder, "plugin_loaded") if e["type"] == "hog")
    assert plugin == "workqueue-testtasks"
    assert blocked["plugin"] == plugin, blocked
    assert blocked["level"] == "error"
    assert alive(holder, thief)
    figures(scenario="handler blocks the event loop 3 leases", lease=lease, blocked_s=3 * lease,
            jobs_recovered=counts["jobs_recovered"], runs_per_job=1, logged_blocked_s=blocked["blocked_s"],
            plugin_named=blocked["plugin"])


# -- 4. Redis restart under load: graceful, then kill -9 (AOF everysec) -------------------------


def resume_times(load: Load, book: Path, back: float) -> tuple[float, float]:
    """Seconds from `back` to the first accepted enqueue begun after it, and to the first job finished after it."""

    def first_accept() -> float | None:
        times = [r.ended for r in load.snapshot() if r.status == 202 and r.began >= back]
        return min(times) - back if times else None

    def first_finish() -> float | None:
        times = [r.at for r in ledger(book) if r.at >= back]
        return min(times) - back if times else None

    accept = wait_for(first_accept, 15, "the producer to accept jobs again")
    finish = wait_for(first_finish, 15, "the workers to finish jobs again")
    return accept, finish


def drain(producer: Service, book: Path, accepted: list[str], timeout: float) -> dict[str, str]:
    """Wait until every accepted job completed, or nothing is left to run; then classify the missing:
    job id -> 'lost' (its record is gone) or its status (stranded)."""

    def settled() -> bool:
        if set(accepted) <= set(completions(book)):
            return True
        with contextlib.suppress(AssertionError):
            m = metrics(producer)
            return m["total_jobs_in_queue"] == m["jobs_active"] == m["jobs_scheduled"] == 0
        return False

    with contextlib.suppress(AssertionError):
        wait_for(settled, timeout, "the accepted jobs to complete")
    done = completions(book)
    missing = {}
    for job_id in accepted:
        if job_id not in done:
            reply = request("GET", f"{producer.url}/jobs/{job_id}")
            missing[job_id] = "lost" if reply.status == 404 else reply.body.get("status", str(reply.status))
    return missing


def shutdown(server: RedisServer) -> None:
    """SHUTDOWN over a bare socket (redis-py's client retries against the server going away)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"SHUTDOWN\r\n")
        with contextlib.suppress(OSError):
            while s.recv(1024):
                pass
    server.process.wait(10)


def outage_answers(load: Load, down: float, up: float) -> list[Reply]:
    return [r for r in load.snapshot() if r.began >= down and r.ended <= up]


OUTAGE = 2.5  # seconds Redis stays away: longer than the lease (1 s), as a real restart takes


@pytest.mark.timeout(150)
def test_redis_restart_under_load_graceful_then_kill_9(
    services: Any, own_redis: Callable[..., RedisServer], tmp_path: Path, figures: Callable[..., None]
) -> None:
    aof = ("--appendonly", "yes", "--appendfsync", "everysec")
    server = own_redis(*aof)
    port = server.port
    config = write_config(tmp_path / "cfg", server.url, lease=1.0, grace_period=1.0, redis_timeout=1.0)
    producer = services("producer", "--role", "producer", "--config", str(config))
    workers = [services(f"worker{i}", *worker_args(config, "--concurrency", "20")) for i in (1, 2)]
    for s in (producer, *workers):
        s.wait_ready()
    pids = [s.process.pid for s in (producer, *workers)]
    book = tmp_path / "ledger.txt"

    # Phase 1: graceful SHUTDOWN (the AOF is fsynced), restart on the same port and directory.
    with Load(producer.url, book) as load:
        wait_for(lambda: len(load.accepted()) >= 300 and len(ledger(book)) >= 100, 20, "load to flow")
        shutdown(server)
        down = time.time()
        wait_for(lambda: len([r for r in outage_answers(load, down, time.time()) if r.status == 503]) >= 20, 10,
                 "503s during the outage")
        time.sleep(max(0.0, down + OUTAGE - time.time()))  # the fault: Redis stays down past the lease
        restarting = time.time()
        server = own_redis(*aof, port=port)
        up = time.time()
        during = outage_answers(load, down, restarting)
        accept_s, finish_s = resume_times(load, book, up)
        wait_for(lambda: len([r for r in load.snapshot() if r.status == 202 and r.began > up]) >= 50, 10,
                 "load after the restart")
    assert during and all(r.status == 503 for r in during), {r.status for r in during}
    assert all(r.headers.get("Retry-After") for r in during)
    assert all(r.body.get("error") for r in during)
    slowest_503 = max(r.seconds for r in during)
    assert slowest_503 < 1.0, f"a 503 took {slowest_503:.2f} s"
    assert accept_s < 5 and finish_s < 5, (accept_s, finish_s)
    accepted_1 = load.accepted()
    missing_1 = drain(producer, book, accepted_1, 20)
    assert not missing_1, f"accepted jobs lost or stranded after a graceful Redis restart: {missing_1}"
    assert alive(producer, *workers) and [s.process.pid for s in (producer, *workers)] == pids

    # Phase 2: kill -9 under load. With appendfsync everysec Redis writes the AOF before it answers
    # and fsyncs every second: a process crash should lose nothing, a machine crash up to ~1-2 s.
    before_kill = len(ledger(book))
    with Load(producer.url, book) as load2:
        wait_for(lambda: len(load2.accepted()) >= 300 and len(ledger(book)) >= before_kill + 100, 20,
                 "load to flow again")
        server.process.kill()
        server.process.wait(10)
        killed = time.time()
        wait_for(lambda: len([r for r in outage_answers(load2, killed, time.time()) if r.status == 503]) >= 20, 10,
                 "503s after the kill")
        time.sleep(max(0.0, killed + OUTAGE - time.time()))  # the fault
        restarting = time.time()
        server = own_redis(*aof, port=port)
        up2 = time.time()
        during2 = outage_answers(load2, killed, restarting)
        accept2_s, finish2_s = resume_times(load2, book, up2)
        wait_for(lambda: len([r for r in load2.snapshot() if r.status == 202 and r.began > up2]) >= 50, 10,
                 "load after the second restart")
    accepted_2 = load2.accepted()
    in_last_2s = load2.accepted([r for r in load2.snapshot() if r.status == 202 and killed - 2 <= r.ended <= killed])
    missing_2 = drain(producer, book, accepted_2, 20)
    lost_2 = [j for j, why in missing_2.items() if why == "lost"]
    stranded_2 = {j: why for j, why in missing_2.items() if why != "lost"}
    done = completions(book)
    duplicates = sum(1 for runs in done.values() if len(runs) > 1)
    assert during2 and all(r.status == 503 and r.headers.get("Retry-After") for r in during2)
    assert accept2_s < 5 and finish2_s < 5, (accept2_s, finish2_s)
    assert alive(producer, *workers) and [s.process.pid for s in (producer, *workers)] == pids
    figures(scenario="Redis graceful SHUTDOWN + restart under load (AOF everysec)",
            accepted=len(accepted_1), lost=len(missing_1), answers_503=len(during),
            slowest_503_s=round(slowest_503, 3), producer_resume_s=round(accept_s, 3),
            workers_resume_s=round(finish_s, 3))
    figures(scenario="Redis kill -9 + restart under load (AOF everysec)", accepted=len(accepted_2),
            lost=len(lost_2), stranded=len(stranded_2), accepted_in_last_2s_before_kill=len(in_last_2s),
            slowest_503_s=round(max(r.seconds for r in during2), 3), producer_resume_s=round(accept2_s, 3),
            workers_resume_s=round(finish2_s, 3), duplicates_both_phases=duplicates,
            outage_s=OUTAGE)
    # A worker never hands back a job it already finished: the same attempt completed twice means
    # it did (a job taken by another worker's reaper runs again with the next attempt number).
    rerun_same_attempt = sorted(j for j, runs in done.items() if len({r.attempt for r in runs}) < len(runs))
    assert not rerun_same_attempt, (
        f"{len(rerun_same_attempt)} jobs completed twice with the same attempt number (finished, then handed "
        f"back by their own worker): {rerun_same_attempt[:3]}")
    # Bounded by the fsync window (at most ~2 s of writes with everysec), and nothing stranded.
    assert len(lost_2) <= len(in_last_2s), (lost_2, len(in_last_2s))
    assert not stranded_2, f"jobs neither lost nor ever completed: {stranded_2}"


@pytest.mark.timeout(60)
def test_jobs_finished_during_a_redis_outage_longer_than_the_lease_are_recorded_not_run_again(
    services: Any, own_redis: Callable[..., RedisServer], tmp_path: Path, figures: Callable[..., None]
) -> None:
    """One worker process, so no other worker can take its jobs: every job it finished while Redis
    was away must be recorded once Redis is back, not handed back and run a second time."""
    aof = ("--appendonly", "yes", "--appendfsync", "everysec")
    server = own_redis(*aof)
    config = write_config(tmp_path / "cfg", server.url, lease=1.0, grace_period=1.0, redis_timeout=1.0)
    only = services("only", "--role", "both", "--config", str(config), "--concurrency", "20").wait_ready()
    book, go = tmp_path / "ledger.txt", tmp_path / "go"
    ids = enqueue(only, [nap(book, 0.2, go) for _ in range(20)])
    wait_for(lambda: set(started(only)) == set(ids), 10, "all 20 jobs to start")
    shutdown(server)
    down = time.time()
    go.touch()  # the jobs finish while Redis is away: their outcomes wait in the worker
    wait_for(lambda: len(ledger(book)) == 20, 5, "the 20 jobs to finish during the outage")
    time.sleep(max(0.0, down + OUTAGE - time.time()))  # the fault: Redis stays down past the lease
    server = own_redis(*aof, port=server.port)
    wait_for(lambda: metrics(only)["jobs_done"] == 20, 15, "jobs_done to reach 20")
    done = completions(book)
    twice = [j for j in ids if len(done[j]) > 1]
    refused = events(only, "stale_outcome_refused")
    figures(scenario="jobs finished during a Redis outage > lease (one worker)", jobs=20, outage_s=OUTAGE,
            run_twice=len(twice), stale_outcomes_refused=len(refused), lease_lost=bool(events(only, "lease_lost")))
    assert not refused and not twice, (
        f"{len(twice)} of 20 jobs ran twice: the worker handed back jobs whose outcomes were waiting to be "
        f"recorded, then its own outcomes were refused as stale ({len(refused)} stale_outcome_refused)")


# -- 5. Redis unreachable or hung --------------------------------------------------------------


def pause_redis(server: RedisServer, how: str, start: Callable[..., RedisServer]) -> Callable[[], RedisServer]:
    """Make Redis unreachable or hung; returns the function that brings it back."""
    if how == "stopped":  # and restarted empty: no persistence, the service recreates its queues
        port = server.port
        stop_redis(server)
        return lambda: start(port=port)
    if how == "sigstop":
        os.kill(server.process.pid, signal.SIGSTOP)

        def resume() -> RedisServer:
            os.kill(server.process.pid, signal.SIGCONT)
            return server

        return resume
    assert how == "client_pause"
    server.client().execute_command("CLIENT", "PAUSE", "3000", "ALL")
    return lambda: server  # the pause ends by itself after 3 s


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["stopped", "sigstop", "client_pause"])
def test_redis_unreachable_or_hung_gives_a_fast_503_and_recovery(
    services: Any, own_redis: Callable[..., RedisServer], tmp_path: Path, figures: Callable[..., None], how: str
) -> None:
    redis_timeout = 1.0
    server = own_redis()
    config = write_config(tmp_path / "cfg", server.url, lease=1.0, grace_period=1.0, redis_timeout=redis_timeout)
    service = services("both", "--role", "both", "--config", str(config)).wait_ready()  # producer and worker
    book = tmp_path / "ledger.txt"
    (first,) = enqueue(service, [record(book)])
    wait_for(lambda: first in completions(book), 10, "a job to flow before the fault")

    bring_back = pause_redis(server, how, own_redis)
    faulted = time.time()
    answers: list[Reply] = []

    def post() -> None:
        answers.append(request("POST", f"{service.url}/enqueue", [record(book)], timeout=20))

    posters = [threading.Thread(target=post) for _ in range(5)]
    for t in posters:
        t.start()
    readyz = request("GET", f"{service.url}/readyz", timeout=20)
    for t in posters:
        t.join(30)
    healthz = request("GET", f"{service.url}/healthz", timeout=5)
    answered_during_fault = how != "client_pause" or time.time() - faulted < 3.0
    server = bring_back()
    wait_for(lambda: _pings(server), 10, "Redis to answer again")
    back = time.time()

    def accepted_again() -> list[str] | None:
        reply = request("POST", f"{service.url}/enqueue", [record(book)], timeout=20)
        return [a["id"] for a in reply.body] if reply.status == 202 else None

    (fresh,) = wait_for(accepted_again, 10, "the service to accept jobs again")
    accepted_s = time.time() - back
    wait_for(lambda: fresh in completions(book), 10 - accepted_s, "a job enqueued after the fault to complete")
    flowing_s = time.time() - back

    slowest = max(a.seconds for a in answers)
    figures(scenario=f"Redis {how}", redis_timeout=redis_timeout,
            answers=[a.status for a in answers], slowest_answer_s=round(slowest, 3),
            readyz=readyz.status, readyz_s=round(readyz.seconds, 3), jobs_flow_again_s=round(flowing_s, 3))
    assert [a.status for a in answers] == [503] * 5, (
        f"during the fault /enqueue answered {[(a.status, round(a.seconds, 2)) for a in answers]}"
        + ("" if answered_during_fault else " (only after the 3 s pause had ended)"))
    assert all(a.headers.get("Retry-After") and a.body.get("error") for a in answers)
    assert readyz.status == 503 and healthz.status == 200
    assert alive(service), service.read_stderr()
    assert not events(service, "http_error")
    assert flowing_s < 10
    # README: redis_timeout is "one Redis command's timeout; an unreachable Redis gives 503 this fast".
    assert slowest <= redis_timeout + 0.5, f"503 after {slowest:.2f} s with redis_timeout = {redis_timeout}"


def _pings(server: RedisServer) -> bool:
    try:
        with server.client() as c:
            return bool(c.ping())
    except redis.RedisError:
        return False


# -- 6. Poison job -----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_job_that_kills_its_worker_is_dead_lettered_after_its_delivery_limit(
    services: Any, redis_url: str, tmp_path: Path, figures: Callable[..., None]
) -> None:
    lease, retries = 0.5, 1
    config = write_config(tmp_path / "cfg", redis_url, lease=lease, grace_period=1.0)
    producer = services("producer", "--role", "producer", "--config", str(config))
    starts = iter(range(100))
    workers = [services(f"worker{next(starts)}", *worker_args(config, "--concurrency", "5")) for _ in range(2)]
    for s in (producer, *workers):
        s.wait_ready()
    attempts_book, book = tmp_path / "poison-attempts.txt", tmp_path / "ledger.txt"
    (poison,) = enqueue(producer, [{"type": "crash", "retries": retries, "payload": {"ledger": str(attempts_book)}}])
    others = enqueue(producer, [record(book) for _ in range(20)])

    every_worker = list(workers)

    def restart_the_dead() -> None:  # as a supervisor would
        for i, w in enumerate(workers):
            if w.process.poll() is not None:
                workers[i] = services(f"worker{next(starts)}", *worker_args(config, "--concurrency", "5")).wait_ready()
                every_worker.append(workers[i])

    def dead_workers() -> list[int]:
        return [w.process.returncode for w in every_worker if w.process.poll() is not None]

    deadline = time.monotonic() + 60
    while job(producer, poison)["status"] != "dead":
        assert time.monotonic() < deadline, f"the poison job never died: {job(producer, poison)}"
        assert len(dead_workers()) <= 5, f"crash loop: {len(dead_workers())} workers died"
        restart_the_dead()
        time.sleep(0.05)  # polling interval
    restart_the_dead()  # any that died of it before it was buried
    deaths = dead_workers()

    record_ = job(producer, poison)
    assert "delivery limit" in record_["error"], record_
    attempts = ledger(attempts_book)
    assert len(attempts) == retries + 1, attempts
    assert deaths == [1] * (retries + 1), deaths
    logged = [e for s in workers for e in events(s, "dead") if e.get("job_id") == poison]
    assert logged and "delivery limit" in logged[0]["error"]
    dead = request("GET", f"{producer.url}/dead").body["jobs"]
    assert [d["id"] for d in dead] == [poison]
    # The fleet stops dying, and the other jobs (and new ones) still complete.
    extra = enqueue(producer, [record(book) for _ in range(5)])
    wait_for(lambda: set(others + extra) <= set(completions(book)), 20, "the other jobs to complete")
    assert alive(*workers) and dead_workers() == deaths, "no worker dies once the poison job is dead"
    assert metrics(producer)["jobs_failed"] == 1
    # The live worker that buried it counted the death under its type, as the store did.
    buried = sum(value(prometheus_samples(w), "workqueue_jobs_total", queue="default", type="crash",
                       outcome="dead") or 0 for w in workers)
    assert buried == 1
    figures(scenario="poison job (os._exit) with retries=1", worker_deaths=len(deaths),
            attempts=len(attempts), status=record_["status"], error=record_["error"],
            other_jobs_completed=len(set(others + extra) & set(completions(book))))


# -- 7. SIGTERM drain --------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_sigterm_drains_short_jobs_and_hands_long_ones_to_another_worker(
    services: Any, redis_url: str, tmp_path: Path, figures: Callable[..., None]
) -> None:
    grace = 1.0
    config = write_config(tmp_path / "cfg", redis_url, lease=1.0, grace_period=grace)
    producer = services("producer", "--role", "producer", "--config", str(config))
    leaving = services("leaving", *worker_args(config, "--concurrency", "10"))
    producer.wait_ready()
    leaving.wait_ready()
    book = tmp_path / "ledger.txt"
    go = tmp_path / "go"
    short = enqueue(producer, [nap(book, 0.3, go) for _ in range(5)])
    long = enqueue(producer, [nap(book, 1.5, go) for _ in range(2)])
    wait_for(lambda: set(started(leaving)) == {*short, *long}, 10, "all 7 jobs to start")
    staying = services("staying", *worker_args(config, "--concurrency", "10")).wait_ready()
    go.touch()

    leaving.signal(signal.SIGTERM)
    signalled = time.time()
    assert leaving.wait(grace + 5) == 0, leaving.read_stderr()
    exited_s = time.time() - signalled

    log = log_lines(leaving.log_path)
    assert log[-1]["event"] == "service_stopped"
    (stopped,) = [e for e in log if e["event"] == "worker_stopped"]
    assert stopped["released"] == 2, stopped
    wait_for(lambda: set(long) <= set(started(staying)), 3, "the long jobs to restart on the other worker")
    restarts = [epoch(started(staying)[j][0]["ts"]) for j in long]
    # The long jobs are handed back when the grace period ends (they cannot finish within it).
    restart_s = max(restarts) - (signalled + grace)
    wait_for(lambda: set(long) <= set(completions(book)), 10, "the long jobs to complete")
    done = completions(book)
    assert all(len(done[j]) == 1 and done[j][0].pid == leaving.process.pid for j in short), done
    assert all(len(done[j]) == 1 and done[j][0].pid == staying.process.pid for j in long), done
    assert all(done[j][0].attempt == 1 for j in long), "a handed-back attempt does not count"
    figures(scenario="SIGTERM drain", grace_period=grace, exit_status=0, exit_s=round(exited_s, 3),
            handed_back=stopped["released"], restart_elsewhere_s=round(restart_s, 3),
            short_jobs_run_once=len(short), lost=0, duplicates=0)
    assert restart_s < 1.0, f"the handed-back jobs restarted {restart_s:.2f} s after the grace period ended"
    assert exited_s < grace + 1.0, f"exit {exited_s:.2f} s after SIGTERM with grace_period = {grace}"


# -- 9. Auth and limits ------------------------------------------------------------------------


TOKEN = "s3cret-Token_0123456789abcdefABCDEF"


def wrong_tokens() -> list[dict[str, str]]:
    return [
        {},
        {"Authorization": ""},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer {TOKEN[:-1]}X"},  # same length, last character differs
        {"Authorization": f"Bearer {TOKEN.swapcase()}"},
        {"Authorization": f"Bearer {TOKEN * 40}"},
        {"Authorization": f"Bearer  {TOKEN}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"X-Api-Token": TOKEN},
    ]


async def test_with_api_token_every_endpoint_but_healthz_needs_the_bearer_token(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    from tests.conftest import fixture_tasks

    client = await make_client(make_settings(redis_url=redis_url, role="both", api_token=TOKEN), fixture_tasks())
    routes = {(r.method, r.resource.canonical) for r in client.server.app.router.routes()
              if r.method != "HEAD" and r.resource is not None}
    assert ("POST", "/enqueue") in routes and len(routes) >= 10
    some_id = "0" * 32
    good = {"Authorization": f"Bearer {TOKEN}"}
    for method, path in sorted(routes):
        url = path.replace("{id}", some_id)
        if path == "/healthz":
            for headers in wrong_tokens():
                r = await client.request(method, url, headers=headers)
                assert r.status == 200, (method, path, headers)
            continue
        for headers in wrong_tokens():
            r = await client.request(method, url, headers=headers, json={"type": "echo", "payload": {}})
            assert r.status == 401, (method, path, headers, r.status)
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert "error" in await r.json()
        r = await client.request(method, url + "?access_token=" + TOKEN)
        assert r.status == 401, "a token in the query string is not accepted"
        r = await client.request(method, url, headers=good, json={"type": "echo", "payload": {}})
        assert r.status != 401, (method, path)
    # Nothing was enqueued by the refused requests.
    r = await client.get("/metrics", headers=good)
    assert (await r.json())["jobs_enqueued"] == 1  # the one authorised POST /enqueue


async def test_body_size_and_batch_limits_answer_413(make_client: Any, make_settings: Any, redis_url: str) -> None:
    from tests.conftest import fixture_tasks

    client = await make_client(make_settings(redis_url=redis_url, role="producer", max_body_bytes=2048, max_batch=10),
                               fixture_tasks())
    big = orjson.dumps({"type": "echo", "payload": {"x": "a" * 2100}})
    r = await client.post("/enqueue", data=big, headers={"Content-Type": "application/json"})
    assert r.status == 413 and "error" in await r.json()

    async def chunked() -> Any:  # no Content-Length: the limit holds while reading
        for i in range(0, len(big), 100):
            yield big[i:i + 100]

    r = await client.post("/enqueue", data=chunked(), headers={"Content-Type": "application/json"})
    assert r.status == 413 and "error" in await r.json()
    r = await client.post("/enqueue", json=[{"type": "echo", "payload": {}}] * 11)
    assert r.status == 413 and "error" in await r.json()
    r = await client.post("/enqueue", json=[{"type": "echo", "payload": {"x": "a" * 1500}}])
    assert r.status == 202
    r = await client.get("/metrics")
    assert (await r.json())["jobs_enqueued"] == 1


async def test_max_length_backpressure_accepts_nothing_beyond_the_limit(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    import asyncio

    from tests.conftest import fixture_tasks

    client = await make_client(make_settings(redis_url=redis_url, role="producer",
                                             max_length={"burst": 5, "sched": 2, "batch": 3}), fixture_tasks())
    # 20 concurrent single enqueues onto a queue of at most 5: exactly 5 are accepted.
    replies = await asyncio.gather(*(client.post("/enqueue", json={"type": "echo", "queue": "burst", "payload": {}})
                                     for _ in range(20)))
    statuses = sorted(r.status for r in replies)
    assert statuses == [202] * 5 + [503] * 15, statuses
    for r in replies:
        if r.status == 503:
            assert r.headers["Retry-After"] and "maximum length" in (await r.json())["error"]
    # Scheduled jobs count too.
    for _ in range(2):
        assert (await client.post("/enqueue", json={"type": "echo", "queue": "sched", "delay": 60,
                                                    "payload": {}})).status == 202
    r = await client.post("/enqueue", json={"type": "echo", "queue": "sched", "payload": {}})
    assert r.status == 503 and r.headers["Retry-After"]
    # A batch that would cross the limit is refused whole.
    assert (await client.post("/enqueue", json=[{"type": "echo", "queue": "batch", "payload": {}}] * 2)).status == 202
    r = await client.post("/enqueue", json=[{"type": "echo", "queue": "batch", "payload": {}}] * 2)
    assert r.status == 503
    queues = (await (await client.get("/metrics")).json())["queues"]
    assert {q: queues[q]["enqueued"] for q in ("burst", "sched", "batch")} == {"burst": 5, "sched": 2, "batch": 2}
    assert queues["burst"]["waiting"] == 5 and queues["sched"]["scheduled"] == 2 and queues["batch"]["waiting"] == 2


# -- slow: soak with periodic worker kills -----------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(0)
def test_soak_steady_load_with_periodic_worker_kills(
    services: Any, redis_url: str, tmp_path: Path, figures: Callable[..., None]
) -> None:
    """WORKQUEUE_SOAK_SECONDS (default 1800) of steady load; every 20 s one of three workers is
    SIGKILLed and replaced. Nothing accepted may be lost; duplicates are counted."""
    seconds = float(os.environ.get("WORKQUEUE_SOAK_SECONDS", "1800"))
    config = write_config(tmp_path / "cfg", redis_url, lease=1.0, grace_period=1.0)
    producer = services("producer", "--role", "producer", "--config", str(config)).wait_ready()
    names = iter(range(10_000))
    workers = [services(f"w{next(names)}", *worker_args(config, "--concurrency", "20")).wait_ready() for _ in range(3)]
    book = tmp_path / "ledger.txt"
    kills = 0
    with Load(producer.url, book, threads=1, batch=5, pause=0.02) as load:  # about 250 jobs/s
        began = time.monotonic()
        next_kill = began + 20
        while time.monotonic() - began < seconds:
            if time.monotonic() >= next_kill:
                victim = workers.pop(0)
                victim.signal(signal.SIGKILL)
                victim.wait(5)
                kills += 1
                workers.append(services(f"w{next(names)}", *worker_args(config, "--concurrency", "20")).wait_ready())
                next_kill += 20
            time.sleep(0.5)  # the soak's pacing
            assert alive(producer, *workers)
    accepted = load.accepted()
    missing = drain(producer, book, accepted, 60)
    done = completions(book)
    duplicates = sum(1 for j in accepted if len(done.get(j, [])) > 1)
    figures(scenario="soak with periodic worker SIGKILL", seconds=seconds, accepted=len(accepted),
            worker_kills=kills, lost=len(missing), duplicates=duplicates)
    assert not missing, missing


def rss_kb(service: Service) -> int:
    with open(f"/proc/{service.process.pid}/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith("VmRSS")))


@pytest.mark.slow
@pytest.mark.timeout(0)
def test_a_million_jobs_leave_worker_memory_and_redis_keys_at_baseline(
    services: Any, redis_url: str, tmp_path: Path, figures: Callable[..., None]
) -> None:
    """WORKQUEUE_MILLION_JOBS (default 1,000,000) echo jobs through two workers, the backlog kept
    under 50,000; afterwards worker RSS is back near its level after the first 50,000 jobs and,
    once the finished records expired (result_ttl = 5 s), Redis holds only the baseline keys."""
    total = int(os.environ.get("WORKQUEUE_MILLION_JOBS", "1000000"))
    config = write_config(tmp_path / "cfg", redis_url, lease=1.0, result_ttl=5.0, concurrency=100)
    producer = services("producer", "--role", "producer", "--config", str(config)).wait_ready()
    workers = [services(f"w{i}", *worker_args(config)).wait_ready() for i in (1, 2)]
    r = redis.Redis.from_url(redis_url)
    with r:
        baseline_keys = r.dbsize()
        sent, warm_rss, began = 0, None, time.monotonic()
        batch = [{"type": "echo", "payload": {"n": i}} for i in range(1000)]
        while sent < total:
            m = metrics(producer)
            if sent - m["jobs_done"] > 50_000:
                time.sleep(0.05)  # backpressure of the load generator
                continue
            for _ in range(10):
                reply = request("POST", f"{producer.url}/enqueue", batch[: min(1000, total - sent)])
                assert reply.status == 202, reply
                sent += len(reply.body)
                if sent >= total:
                    break
            if warm_rss is None and m["jobs_done"] >= min(50_000, total // 4):
                warm_rss = [rss_kb(w) for w in workers]
        wait_for(lambda: metrics(producer)["jobs_done"] == total, 600, "every job to finish")
        elapsed = time.monotonic() - began
        final_rss = [rss_kb(w) for w in workers]
        wait_for(lambda: r.dbsize() <= baseline_keys + 5, 120, "the finished job records to expire")
        leftover = r.dbsize() - baseline_keys
    assert alive(producer, *workers)
    figures(scenario="1,000,000 jobs: memory and keys back to baseline", jobs=total, seconds=round(elapsed, 1),
            jobs_per_s=round(total / elapsed), worker_rss_mib_warm=[round(k / 1024) for k in warm_rss or []],
            worker_rss_mib_end=[round(k / 1024) for k in final_rss], redis_keys_baseline=baseline_keys,
            redis_keys_left=leftover)
    assert warm_rss is not None
    assert all(end <= warm * 1.5 + 20 * 1024 for end, warm in zip(final_rss, warm_rss, strict=True)), \
        (warm_rss, final_rss)


def prometheus_samples(service: Service) -> list[Any]:
    with urllib.request.urlopen(urllib.request.Request(f"{service.url}/metrics", headers={"Accept": "text/plain"}),
                                timeout=5) as r:
        return samples_of(r.read().decode())
