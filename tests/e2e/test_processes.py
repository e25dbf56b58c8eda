"""Real `python -m workqueue` processes and signals: sharing work, SIGKILL recovery, SIGTERM drain."""

from __future__ import annotations

import shutil
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Service, read_log, wait_for
from tests.support import http, write_config
from tests.support import service_metrics as metrics

# The process tests run on one server, on the Redis Cluster and on the Sentinel group.
pytestmark = pytest.mark.topologies

SEED_EXAMPLE = {"type": "send_email", "Retries": 3,
                "payload": {"to": "worldisweird2020@gmail.com", "subject": "testing producer"}}






def ledger_runs(path: Path) -> dict[str, list[str]]:
    """Job id -> pids of the processes that ran it to the end."""
    runs: dict[str, list[str]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            job_id, _attempt, pid, _ts = line.split()
            runs.setdefault(job_id, []).append(pid)
    return runs


def started_jobs(service: Service) -> set[str]:
    return {e["job_id"] for e in read_log(service.log_path) if e["event"] == "started"}


def test_quickstart_config_runs_the_seed_example_in_memory(services: Any, tmp_path: Path) -> None:
    """The shipped config.toml and plugins/ with the embedded store: the seed's POST succeeds."""
    home = tmp_path / "quickstart"
    home.mkdir()
    shutil.copy(ROOT / "config.toml", home / "config.toml")
    shutil.copytree(ROOT / "plugins", home / "plugins", ignore=shutil.ignore_patterns("__pycache__"))
    service = services("quickstart").wait_ready()
    status, answer = http("POST", f"{service.url}/enqueue", SEED_EXAMPLE)
    assert status == 202, answer
    wait_for(lambda: metrics(service)["jobs_done"] == 1, 10, "jobs_done to reach 1")
    assert len(list((home / "outbox").glob("*.eml"))) == 1


def test_producer_and_two_workers_share_the_work(services: Any, redis_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", redis_url, lease=1.0, concurrency=5)
    producer = services("producer", "--role", "producer", "--config", str(config)).wait_ready()
    workers = [services(f"worker{i}", "--role", "worker", "--config", str(config)).wait_ready() for i in (1, 2)]
    ledger = tmp_path / "ledger.txt"
    jobs = [{"type": "sleep", "payload": {"seconds": 0.05, "ledger": str(ledger)}} for _ in range(60)]
    status, answer = http("POST", f"{producer.url}/enqueue", jobs)
    assert status == 202, answer
    wait_for(lambda: metrics(producer)["jobs_done"] == 60, 30, "all 60 jobs to finish")
    runs = ledger_runs(ledger)
    assert sorted(runs) == sorted(a["id"] for a in answer)
    assert all(len(pids) == 1 for pids in runs.values())
    pids = {pid for p in runs.values() for pid in p}
    assert pids == {str(w.process.pid) for w in workers}, "both workers should have run jobs"
    # Every process reports the same cluster-wide counts.
    assert metrics(workers[0])["jobs_done"] == metrics(workers[1])["jobs_done"] == 60


def test_sigkilled_workers_jobs_are_run_by_another_worker_without_loss(
    services: Any, redis_url: str, tmp_path: Path
) -> None:
    lease = 1.0
    config = write_config(tmp_path / "cfg", redis_url, lease=lease)
    victim = services("victim", "--role", "both", "--config", str(config), "--concurrency", "10").wait_ready()
    ledger = tmp_path / "ledger.txt"
    jobs = [{"type": "sleep", "payload": {"seconds": 1.0, "ledger": str(ledger)}} for _ in range(10)]
    status, answer = http("POST", f"{victim.url}/enqueue", jobs)
    assert status == 202
    ids = {a["id"] for a in answer}
    wait_for(lambda: started_jobs(victim) == ids, 10, "the victim to start all 10 jobs")
    survivor = services("survivor", "--role", "worker", "--config", str(config), "--concurrency", "20").wait_ready()
    victim.signal(signal.SIGKILL)
    killed_at = time.time()
    victim.wait(5)

    wait_for(lambda: started_jobs(survivor) == ids, 10, "the survivor to restart every held job")
    restarted = [e for e in read_log(survivor.log_path) if e["event"] == "started"]
    latest_start = max(datetime.fromisoformat(e["ts"]).timestamp() for e in restarted)
    # Recovery is bounded by one lease plus one reaper period (lease / 4), plus scheduling slack.
    assert latest_start - killed_at < lease * 1.25 + 3.0
    wait_for(lambda: set(ledger_runs(ledger)) == ids, 10, "every job to complete")
    assert all(pids == [str(survivor.process.pid)] for pids in ledger_runs(ledger).values())
    assert metrics(survivor)["jobs_recovered"] == 10
    assert metrics(survivor)["jobs_done"] == 10


def test_a_live_workers_long_job_is_never_taken_from_it(services: Any, redis_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", redis_url, lease=0.5)
    holder = services("holder", "--role", "both", "--config", str(config)).wait_ready()
    other = services("other", "--role", "worker", "--config", str(config)).wait_ready()
    ledger = tmp_path / "ledger.txt"
    # Eight leases long, as a plain function in a thread and as a coroutine.
    jobs = [{"type": t, "payload": {"seconds": 4.0, "ledger": str(ledger)}} for t in ("sleep", "block")]
    status, _ = http("POST", f"{holder.url}/enqueue", jobs)
    assert status == 202
    wait_for(lambda: len(ledger_runs(ledger)) == 2, 20, "both long jobs to finish")
    runs = ledger_runs(ledger)
    assert all(len(pids) == 1 for pids in runs.values()), runs
    assert metrics(holder)["jobs_recovered"] == 0
    assert metrics(holder)["jobs_done"] == 2
    assert other.process.poll() is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_signal_finishes_short_jobs_hands_back_long_ones_and_exits_0(
    services: Any, redis_url: str, tmp_path: Path, signum: int
) -> None:
    config = write_config(tmp_path / "cfg", redis_url, lease=1.0, grace_period=1.0)
    leaving = services("leaving", "--role", "both", "--config", str(config)).wait_ready()
    ledger = tmp_path / "ledger.txt"
    short = [{"type": "sleep", "payload": {"seconds": 0.3, "ledger": str(ledger)}} for _ in range(5)]
    long = [{"type": "sleep", "payload": {"seconds": 30, "ledger": str(ledger)}} for _ in range(2)]
    status, answer = http("POST", f"{leaving.url}/enqueue", short + long)
    assert status == 202
    ids = [a["id"] for a in answer]
    wait_for(lambda: started_jobs(leaving) == set(ids), 10, "all jobs to start")
    staying = services("staying", "--role", "worker", "--config", str(config)).wait_ready()

    leaving.signal(signum)
    signalled = time.monotonic()
    assert leaving.wait(10) == 0, leaving.read_stderr()
    assert time.monotonic() - signalled < 1.0 + 3.0  # grace period plus shutdown overhead

    assert set(ledger_runs(ledger)) == set(ids[:5]), "short jobs finish before exit"
    events = read_log(leaving.log_path)
    assert events[-1]["event"] == "service_stopped"
    stopped = next(e for e in events if e["event"] == "worker_stopped")
    assert stopped["released"] == 2, events
    # The handed-back jobs start on the other worker at once, not after a lease.
    wait_for(lambda: set(ids[5:]) <= started_jobs(staying), 1.5, "the long jobs to restart elsewhere")


def logged(service: Service, event: str) -> set[str]:
    return {e["job_id"] for e in read_log(service.log_path) if e["event"] == event and "job_id" in e}


def test_cancel_stops_running_jobs_on_both_of_two_worker_processes(
    services: Any, redis_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "cfg", redis_url, lease=1.0, concurrency=2)
    first = services("first", "--role", "both", "--config", str(config)).wait_ready()
    second = services("second", "--role", "worker", "--config", str(config)).wait_ready()
    ledger = tmp_path / "ledger.txt"
    jobs = [{"type": "sleep", "payload": {"seconds": 30, "ledger": str(ledger)}} for _ in range(4)]
    status, answer = http("POST", f"{first.url}/enqueue", jobs)
    assert status == 202, answer
    ids = {a["id"] for a in answer}
    # Two slots each: both processes hold two of the four jobs.
    wait_for(lambda: len(logged(first, "started")) == 2 and len(logged(second, "started")) == 2, 10,
             "each process to start two jobs")
    held = {first: logged(first, "started"), second: logged(second, "started")}
    assert held[first] | held[second] == ids

    # Each process's jobs are cancelled through the *other* process's HTTP API, both ways.
    cancelled_at = time.monotonic()
    for holder, via in ((first, second), (second, first)):
        for job_id in held[holder]:
            status, answer = http("POST", f"{via.url}/jobs/{job_id}/cancel")
            assert status == 200, answer
            assert (answer["previous_status"], answer["status"]) == ("active", "cancelled")

    for holder in (first, second):
        wait_for(lambda holder=holder: logged(holder, "cancelled") == held[holder], 5,
                 f"the process holding {sorted(held[holder])} to stop them")
    assert time.monotonic() - cancelled_at < 5
    wait_for(lambda: http("GET", f"{first.url}/metrics")[1]["jobs_cancelled"] == 4, 5, "4 cancellations counted")
    for service in (first, second):
        m = http("GET", f"{service.url}/metrics")[1]
        assert (m["jobs_cancelled"], m["jobs_active"], m["jobs_done"], m["jobs_failed"]) == (4, 0, 0, 0)
    for job_id in ids:
        status, job = http("GET", f"{second.url}/jobs/{job_id}")
        assert (status, job["status"], job["result"]) == (200, "cancelled", None)
    assert not ledger.exists() or ledger.read_text() == "", "a cancelled handler ran to its end"

    # The freed slots take new work on both processes.
    quick = [{"type": "record", "payload": {"ledger": str(ledger)}} for _ in range(4)]
    status, answer = http("POST", f"{first.url}/enqueue", quick)
    assert status == 202
    wait_for(lambda: http("GET", f"{first.url}/metrics")[1]["jobs_done"] == 4, 10, "the next four jobs to run")
    assert {line.split()[0] for line in ledger.read_text().splitlines()} == {a["id"] for a in answer}
