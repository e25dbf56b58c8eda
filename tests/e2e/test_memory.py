"""Redis resources (DESIGN section 15): a Redis that reaches its `maxmemory`, an evicting
`maxmemory-policy`, and start-up failures that speak one clear line.

Each test starts a redis-server of its own (a capped one where it matters), and real
`python -m workqueue` processes; the ledger outside Redis (tests/e2e/test_reliability.py) counts
how many times each job ran.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURE_PLUGINS, RedisServer, wait_for
from tests.e2e.test_reliability import Reply, alive, completions, events, nap, request, worker_args
from tests.support import write_config

PAYLOAD = "x" * 2000  # jobs of about 2 KB: 16 MB fill in seconds


def job_count(server: RedisServer) -> int:
    with server.client() as r:
        return sum(1 for _ in r.scan_iter("wq:*:job:*", count=1000))


class Flood:
    """Threads posting arrays of jobs until stopped; every reply kept."""

    def __init__(self, url: str, make: Any, threads: int = 3, batch: int = 50) -> None:
        self.url, self.make, self.batch = url, make, batch
        self.replies: list[tuple[int, Reply]] = []  # (jobs in the request, reply)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        while not self.stopping.is_set():
            reply = request("POST", f"{self.url}/enqueue", [self.make() for _ in range(self.batch)], timeout=15)
            with self.lock:
                self.replies.append((self.batch, reply))
            if reply.status != 202:
                time.sleep(0.05)  # a client backing off, not synchronisation

    def __enter__(self) -> Flood:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(20)

    def snapshot(self) -> list[tuple[int, Reply]]:
        with self.lock:
            return list(self.replies)

    def accepted(self) -> list[str]:
        return [a["id"] for _, r in self.snapshot() if r.status == 202 for a in r.body]

    def refused_for_memory(self) -> int:
        return sum(1 for _, r in self.snapshot() if r.status == 503 and "out of memory" in str(r.body))


@pytest.mark.timeout(180)
def test_a_full_redis_refuses_enqueues_whole_keeps_workers_and_leases_and_everything_resumes(
    services: Any, own_redis: Any, tmp_path: Path, figures: Any
) -> None:
    server = own_redis("--maxmemory", "16mb", "--maxmemory-policy", "noeviction")
    config = write_config(tmp_path / "cfg", server.url, lease=1.0, grace_period=1.0)
    producer = services("producer", "--role", "producer", "--config", str(config)).wait_ready()
    # A slow worker, running through the whole episode: it holds jobs while Redis is full.
    steady = services("steady", *worker_args(config, "--concurrency", "4")).wait_ready()
    book = tmp_path / "ledger.txt"

    def heavy() -> dict[str, Any]:
        return {"type": "nap", "payload": {"seconds": 0.01, "ledger": str(book), "blob": PAYLOAD}}

    with Flood(producer.url, heavy) as flood:
        wait_for(lambda: flood.refused_for_memory() >= 20, 60, "Redis to fill and enqueues to be refused")
    # Draining frees memory again (stream entries go); pin Redis above its limit, so that "full"
    # lasts while the rest of the test looks at it.
    with server.client() as r:
        r.config_set("maxmemory", int(r.info("memory")["used_memory"] * 0.9))
    full_at = time.time()
    answers = flood.snapshot()
    statuses = {r.status for _, r in answers}
    accepted = flood.accepted()
    # Exactly what was answered 202 is stored: a refused request stored nothing, not half of it.
    stored = job_count(server)
    finished_before = len(completions(book))

    # A worker started into the full Redis stays up, waiting, and says so.
    late = services("late", *worker_args(config, "--concurrency", "4"))
    wait_for(lambda: late.process.poll() is None and events(late, "worker_waiting"), 20,
             "the late worker to wait for Redis")
    # Meanwhile the running worker keeps finishing jobs, and keeps its lease, with Redis full.
    wait_for(lambda: len(completions(book)) >= finished_before + 20, 20, "the steady worker to keep finishing")
    full_for = time.time() - full_at

    # Memory is raised: the late worker starts, everything drains, enqueues are accepted again.
    with server.client() as r:
        r.config_set("maxmemory", "0")
    freed_at = time.time()
    wait_for(lambda: events(late, "worker_started"), 15, "the late worker to start")
    again = request("POST", f"{producer.url}/enqueue", [nap(book, 0.01)])
    assert again.status == 202, again
    accepted.append(again.body[0]["id"])
    wait_for(lambda: set(accepted) <= set(completions(book)), 120, "every accepted job to run")
    runs = completions(book)
    twice = [j for j in accepted if len(runs[j]) > 1]
    with server.client() as r:
        active = sum(int(r.hget(k, "status") == b"active") for k in r.scan_iter("wq:*:job:*", count=1000))

    figures(accepted=len(accepted), refused_oom=flood.refused_for_memory(), stored=stored, ran_twice=len(twice),
            full_for_s=round(full_for, 1), drained_s_after_memory_raised=round(time.time() - freed_at, 1))
    assert statuses <= {202, 503}, statuses
    assert all(r.headers.get("Retry-After") and "out of memory" in r.body["error"]
               for _, r in answers if r.status == 503), [r.body for _, r in answers if r.status == 503][:3]
    assert stored == len(flood.accepted()), (stored, len(flood.accepted()))
    assert alive(producer, steady, late)
    assert not events(steady, "lease_lost"), "the running worker lost its lease while Redis was full"
    assert not twice, f"{len(twice)} jobs ran twice"
    assert active == 0


@pytest.mark.timeout(60)
def test_an_evicting_redis_is_reported_at_start_and_in_readyz_and_strict_redis_refuses_it(
    services: Any, own_redis: Any, tmp_path: Path
) -> None:
    server = own_redis("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    config = write_config(tmp_path / "cfg", server.url)
    producer = services("producer", "--role", "producer", "--config", str(config)).wait_ready()
    warning = producer.read_stderr()
    assert "allkeys-lru" in warning and "noeviction" in warning and "Traceback" not in warning, warning
    ready = request("GET", f"{producer.url}/readyz")
    assert ready.status == 200 and any("allkeys-lru" in w for w in ready.body["warnings"]), ready
    assert any(e.get("error", "").count("allkeys-lru") for e in events(producer, "redis_risk"))

    strict = write_config(tmp_path / "strict", server.url, strict_redis=True)
    done = run_cli(tmp_path, "--role", "producer", "--config", str(strict))
    assert done.returncode == 2, done
    assert one_line(done.stderr) and "strict_redis" in done.stderr and "allkeys-lru" in done.stderr


def run_cli(cwd: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "workqueue", "--port", str(free_port()), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_line(stderr: str) -> bool:
    return len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr


def test_start_up_failures_are_one_line_with_the_fix(own_redis: Any, tmp_path: Path) -> None:
    locked = own_redis("--requirepass", "s3cret", name="locked")
    plugins = ("--plugins", str(FIXTURE_PLUGINS))
    cases = [
        # A configuration problem: exit 2.
        (("--redis", f"redis://:wrong@127.0.0.1:{locked.port}/0", *plugins), 2, ["redis_url", "credentials"]),
        (("--redis", "redis+cluster://", *plugins), 2, ["redis_url", "host:port"]),
        (("--redis", "memory://", "--role", "worker", *plugins), 2, ["memory://"]),
        (("--config", str(tmp_path / "missing.toml")), 2, ["missing.toml"]),
    ]
    for args, status, words in cases:
        done = run_cli(tmp_path, *args)
        assert done.returncode == status, (args, done)
        assert one_line(done.stderr) and all(w in done.stderr for w in words), (args, done.stderr)
    # The log file cannot be opened: exit 2, naming log_path.
    done = subprocess.run([sys.executable, "-m", "workqueue", "--port", str(free_port()), "--redis", "memory://",
                           *plugins], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                          env={"WORKQUEUE_LOG_PATH": str(tmp_path / "no" / "such" / "logs.txt"), "PATH": "/usr/bin"})
    assert done.returncode == 2 and one_line(done.stderr) and "log_path" in done.stderr, done
    # The port is taken: exit 1, naming it.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "workqueue", "--port", str(port), "--redis", "memory://",
                               *plugins], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and one_line(done.stderr) and str(port) in done.stderr, done


@pytest.mark.timeout(60)
def test_without_redis_a_producer_answers_503_and_a_worker_waits_then_both_run_when_it_comes(
    services: Any, own_redis: Any, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(tmp_path / "cfg", f"redis://127.0.0.1:{port}/0", lease=1.0)
    producer = services("producer", "--role", "producer", "--config", str(config))
    worker = services("worker", *worker_args(config))
    wait_for(lambda: request("GET", f"{producer.url}/healthz").status == 200, 20, "the producer to listen")
    assert request("GET", f"{producer.url}/readyz").status == 503
    assert request("POST", f"{producer.url}/enqueue", {"type": "echo", "payload": {}}).status == 503
    wait_for(lambda: events(worker, "worker_waiting"), 20, "the worker to wait for Redis")
    assert "Traceback" not in producer.read_stderr() + worker.read_stderr()

    own_redis(port=port)
    wait_for(lambda: events(worker, "worker_started"), 20, "the worker to start once Redis is there")
    reply = request("POST", f"{producer.url}/enqueue", {"type": "echo", "payload": {"n": 1}})
    assert reply.status == 202, reply
    wait_for(lambda: request("GET", f"{producer.url}/jobs/{reply.body['id']}").body["status"] == "succeeded", 10,
             "the job to run")
    assert alive(producer, worker)
