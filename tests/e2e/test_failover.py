"""Failover under load, on a real Redis Cluster and a real Sentinel group (DESIGN section 10).

A producer and two workers (real processes) run jobs on queues spread over every master while a
master is SIGKILLed or handed over by a manual failover. The oracle is the ledger outside Redis
(tests/e2e/test_reliability.py): a job that got a 202 and never ran was lost. The tests restore
the shared cluster and Sentinel group (the killed node comes back as a replica) before they end.
Figures are printed and, with WORKQUEUE_FIGURES=<file>, appended there for docs/RELIABILITY.md.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import Service, wait_for
from tests.e2e.test_reliability import Reply, alive, completions, record, request, worker_args
from tests.support import write_config
from tests.topology import NODE_TIMEOUT_MS, Cluster, SentinelGroup, cli, queues_on_every_master, replicas_synced

RECOVERY_BOUND = NODE_TIMEOUT_MS / 1000 + 5  # the election time plus 5 s, as DESIGN section 10 says


class QueueLoad:
    """Threads posting one `record` job at a time, round-robin over the queues; every reply kept
    with its queue."""

    def __init__(self, url: str, book: Path, queues: list[str], threads: int = 4) -> None:
        self.url, self.book, self.queues = url, book, queues
        self.replies: list[tuple[str, Reply]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.turn = itertools.count()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]

    def run(self) -> None:
        while not self.stopping.is_set():
            queue = self.queues[next(self.turn) % len(self.queues)]
            reply = request("POST", f"{self.url}/enqueue", record(self.book, queue=queue), timeout=15)
            with self.lock:
                self.replies.append((queue, reply))
            time.sleep(0.005)  # a client's pacing, not synchronisation

    def __enter__(self) -> QueueLoad:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(20)

    def snapshot(self) -> list[tuple[str, Reply]]:
        with self.lock:
            return list(self.replies)

    def accepted(self) -> list[str]:
        return [r.body["id"] for _, r in self.snapshot() if r.status == 202]


def start_fleet(services: Any, tmp_path: Path, url: str, queues: list[str], **values: Any) -> list[Service]:
    config = write_config(tmp_path / "cfg", url, lease=5.0, grace_period=1.0, queues=queues, **values)
    fleet = [services("producer", "--role", "producer", "--config", str(config)),
             *(services(f"worker{i}", *worker_args(config, "--concurrency", "20")) for i in (1, 2))]
    for s in fleet:
        s.wait_ready(30)
    return fleet


def settle(book: Path, accepted: list[str], timeout: float) -> set[str]:
    """The accepted jobs that never ran, once every accepted job ran or `timeout` passed."""
    try:
        wait_for(lambda: set(accepted) <= set(completions(book)), timeout, "every accepted job to run")
    except AssertionError:
        pass  # what is missing is the answer
    return set(accepted) - set(completions(book))


def outage(load: QueueLoad, queues: set[str], since: float) -> tuple[list[Reply], float | None]:
    """Answers for `queues` that were not 202 after `since`, and the seconds from `since` to the
    first 202 on them that came after the last of those."""
    on = [r for q, r in load.snapshot() if q in queues and r.began >= since]
    refused = [r for r in on if r.status != 202]
    last_refused = max((r.ended for r in refused), default=since)
    back = [r.ended for r in on if r.status == 202 and r.began >= last_refused]
    return refused, (min(back) - since if back else None)


def restore_cluster(cluster: Cluster, killed: int | None) -> None:
    if killed is not None:
        cluster.restart(killed)
    wait_for(cluster.healthy, 60, "the cluster to be whole again")
    wait_for(lambda: len(cluster.masters()) == 3 and all(replicas_synced(p) for p in cluster.masters()), 60,
             "three masters with synced replicas")


def restore_sentinel(group: SentinelGroup, killed: int | None) -> None:
    if killed is not None:
        group.restart(killed, replica_of=group.master_port())
    wait_for(group.healthy, 60, "the Sentinel group to be whole again")


@pytest.fixture
def cluster(redis_cluster: Cluster) -> Iterator[Cluster]:
    redis_cluster.flush()
    yield redis_cluster


@pytest.fixture
def sentinel_group(redis_sentinel: SentinelGroup) -> Iterator[SentinelGroup]:
    redis_sentinel.flush()
    yield redis_sentinel


# -- SIGKILL of a master under load ---------------------------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("durability", ["replica", pytest.param("primary", marks=pytest.mark.slow)])
def test_sigkill_of_a_cluster_master_under_load(
    services: Any, cluster: Cluster, tmp_path: Path, figures: Any, durability: str
) -> None:
    queues = queues_on_every_master(cluster, 2)
    fleet = start_fleet(services, tmp_path, cluster.url, queues, durability=durability)
    book = tmp_path / "ledger.txt"
    victim = cluster.master_of("{" + queues[0] + "}")
    hit = {q for q in queues if cluster.master_of("{" + q + "}") == victim}
    killed = None
    try:
        with QueueLoad(fleet[0].url, book, queues) as load:
            wait_for(lambda: len(completions(book)) >= 200, 30, "the load to flow")
            cluster.kill(victim)
            killed, down = victim, time.time()
            if durability == "replica":
                # A supervisor restarts the dead Redis, which rejoins as the promoted master's
                # replica: until it does, that master has no replica to confirm writes (DESIGN 10).
                wait_for(lambda: cluster.master_of("{" + queues[0] + "}") != victim, 30, "a replica to take over")
                cluster.restart(victim)
                killed = None
            wait_for(lambda: outage(load, hit, down)[1] is not None and time.time() - down > RECOVERY_BOUND / 2,
                     RECOVERY_BOUND + 10, "the queues of the killed master to accept jobs again")
            wait_for(lambda: len([r for q, r in load.snapshot() if q in hit and r.began > down + RECOVERY_BOUND
                                  and r.status == 202]) >= 20, 20, "load after the failover")
        refused, back_after = outage(load, hit, down)
        others = [r for q, r in load.snapshot() if q not in hit and r.status != 202]
        accepted = load.accepted()
        lost = settle(book, accepted, 60)
    finally:
        restore_cluster(cluster, killed)
    statuses = {r.status for r in refused}
    window = max((r.ended for r in refused), default=down) - down
    figures(durability=durability, accepted=len(accepted), lost=len(lost), refused_503=len(refused),
            first_202_after_kill_s=round(back_after or -1, 2), window_503_s=round(window, 2),
            other_queues_errors=len(others), duplicates=sum(len(v) > 1 for v in completions(book).values()))
    assert alive(*fleet), "a workqueue process exited"
    assert statuses <= {503}, f"the affected queues answered {statuses}, not only 503"
    assert all(r.headers.get("Retry-After") for r in refused)
    assert back_after is not None and back_after <= RECOVERY_BOUND, f"recovered after {back_after} s"
    assert [r.status for r in others] == [], f"queues on the other masters were refused: {others[:3]}"
    if durability == "replica":
        assert not lost, f"{len(lost)} jobs that got a 202 never ran: {sorted(lost)[:5]}"


@pytest.mark.timeout(180)
@pytest.mark.parametrize("durability", ["replica", pytest.param("primary", marks=pytest.mark.slow)])
def test_sigkill_of_the_sentinel_master_under_load(
    services: Any, sentinel_group: SentinelGroup, tmp_path: Path, figures: Any, durability: str
) -> None:
    queues = ["default", "mail"]
    fleet = start_fleet(services, tmp_path, sentinel_group.url, queues, durability=durability)
    book = tmp_path / "ledger.txt"
    killed = None
    try:
        with QueueLoad(fleet[0].url, book, queues) as load:
            wait_for(lambda: len(completions(book)) >= 200, 30, "the load to flow")
            killed = sentinel_group.master_port()
            sentinel_group.kill(killed)
            down = time.time()
            wait_for(lambda: sentinel_group.master_port() != killed, 30, "the Sentinels to promote the replica")
            if durability == "replica":  # a supervisor restarts the dead Redis, as the promoted master's replica
                sentinel_group.restart(killed, replica_of=sentinel_group.master_port())
                killed = None
            wait_for(lambda: outage(load, set(queues), down)[1] is not None, RECOVERY_BOUND + 10,
                     "the producer to accept jobs again")
            wait_for(lambda: len([r for _, r in load.snapshot() if r.began > down + RECOVERY_BOUND
                                  and r.status == 202]) >= 20, 20, "load after the failover")
        refused, back_after = outage(load, set(queues), down)
        accepted = load.accepted()
        lost = settle(book, accepted, 60)
    finally:
        restore_sentinel(sentinel_group, killed)
    statuses = {r.status for r in refused}
    figures(durability=durability, accepted=len(accepted), lost=len(lost), refused_503=len(refused),
            first_202_after_kill_s=round(back_after or -1, 2),
            duplicates=sum(len(v) > 1 for v in completions(book).values()))
    assert alive(*fleet), "a workqueue process exited"
    assert statuses <= {503}, f"answered {statuses}, not only 503"
    assert back_after is not None and back_after <= RECOVERY_BOUND, f"recovered after {back_after} s"
    if durability == "replica":
        assert not lost, f"{len(lost)} jobs that got a 202 never ran: {sorted(lost)[:5]}"


# -- a manual failover loses nothing ---------------------------------------------------------------


@pytest.mark.timeout(180)
def test_a_manual_cluster_failover_under_load_loses_nothing(
    services: Any, cluster: Cluster, tmp_path: Path, figures: Any
) -> None:
    queues = queues_on_every_master(cluster, 2)
    fleet = start_fleet(services, tmp_path, cluster.url, queues)
    book = tmp_path / "ledger.txt"
    old = cluster.master_of("{" + queues[0] + "}")
    try:
        with QueueLoad(fleet[0].url, book, queues) as load:
            wait_for(lambda: len(completions(book)) >= 200, 30, "the load to flow")
            began = time.time()
            cli("-p", str(cluster.replica_of(old)), "CLUSTER", "FAILOVER")
            wait_for(lambda: cluster.master_of("{" + queues[0] + "}") != old, 30, "the replica to take over")
            wait_for(lambda: len([r for _, r in load.snapshot() if r.began > time.time() - 1 and r.status == 202])
                     >= 20, 20, "load after the failover")
            time.sleep(1)  # more load on the new master, while the old one is its replica
        refused = [r for _, r in load.snapshot() if r.status != 202 and r.began >= began]
        accepted = load.accepted()
        lost = settle(book, accepted, 60)
    finally:
        restore_cluster(cluster, None)
    figures(accepted=len(accepted), lost=len(lost), refused_503=len(refused))
    assert alive(*fleet)
    assert {r.status for r in refused} <= {503}
    assert not lost, f"{len(lost)} jobs that got a 202 never ran"


@pytest.mark.timeout(180)
def test_a_manual_sentinel_failover_under_load_loses_nothing(
    services: Any, sentinel_group: SentinelGroup, tmp_path: Path, figures: Any
) -> None:
    queues = ["default", "mail"]
    fleet = start_fleet(services, tmp_path, sentinel_group.url, queues)
    book = tmp_path / "ledger.txt"
    old = sentinel_group.master_port()
    try:
        with QueueLoad(fleet[0].url, book, queues) as load:
            wait_for(lambda: len(completions(book)) >= 200, 30, "the load to flow")
            began = time.time()
            with redis.Redis(port=sentinel_group.sentinel_ports[0], socket_timeout=5) as s:
                s.execute_command("SENTINEL", "FAILOVER", "wq")
            wait_for(lambda: sentinel_group.master_port() != old, 30, "the replica to take over")
            wait_for(lambda: len([r for _, r in load.snapshot() if r.began > time.time() - 1 and r.status == 202])
                     >= 20, 30, "load after the failover")
            time.sleep(1)
        refused = [r for _, r in load.snapshot() if r.status != 202 and r.began >= began]
        accepted = load.accepted()
        lost = settle(book, accepted, 60)
    finally:
        restore_sentinel(sentinel_group, None)
    figures(accepted=len(accepted), lost=len(lost), refused_503=len(refused))
    assert alive(*fleet)
    assert {r.status for r in refused} <= {503}
    assert not lost, f"{len(lost)} jobs that got a 202 never ran"
