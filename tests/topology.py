"""Real Redis topologies for the tests, from the same `redis-server` binary as the single server:
a Redis Cluster (3 masters, 1 replica each) and a Sentinel group (1 master, 1 replica, 3
sentinels), each on free ports in a temporary directory. Nothing here touches a Redis it did not
start.

Timeouts are short so that failover tests take seconds: `cluster-node-timeout` and Sentinel's
`down-after-milliseconds` are `NODE_TIMEOUT_MS`. The cluster runs with
`cluster-require-full-coverage no`, as docs/SCALING.md recommends: with the default, Redis refuses
every slot while one master is being replaced.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import redis

from tests.conftest import RedisServer, free_port, start_redis, stop_redis, wait_for

NODE_TIMEOUT_MS = 1000
SERVICE = "wq"  # the Sentinel service name


def cli(*args: str, timeout: float = 30) -> str:
    binary = shutil.which("redis-cli")
    assert binary is not None, "redis-cli is installed with redis-server"
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"redis-cli {' '.join(args)}: {done.stdout}{done.stderr}"
    return done.stdout


@dataclass
class Cluster:
    """A Redis Cluster; `nodes[i]` is the server whose port is `ports[i]`."""

    directory: Path
    nodes: list[RedisServer]
    extra: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:3])

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def info(self, port: int) -> dict[str, str]:
        with redis.Redis(port=port, socket_timeout=5) as c:
            raw = c.execute_command("CLUSTER", "INFO")
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return dict(line.split(":", 1) for line in text.strip().splitlines() if ":" in line)

    def masters(self) -> list[int]:
        """Ports of the live masters that serve slots."""
        out = []
        for n in self.nodes:
            if n.process.poll() is not None:
                continue
            try:
                with redis.Redis(port=n.port, socket_timeout=2) as c:
                    master = c.execute_command("ROLE")[0] in (b"master", "master")
                if master and self.slots_of(n.port):
                    out.append(n.port)
            except redis.RedisError:
                continue
        return sorted(out)

    def slots_of(self, port: int) -> list[tuple[int, int]]:
        with redis.Redis(port=port, socket_timeout=2) as c:
            ranges = []
            for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if int(master[1]) == port:
                    ranges.append((int(start), int(end)))
            return ranges

    def master_of(self, key: str) -> int:
        """The port of the master serving `key`'s slot now."""
        live = next(n for n in self.nodes if n.process.poll() is None)
        with redis.Redis(port=live.port, socket_timeout=2) as c:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, master, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(master[1])
        raise AssertionError(f"no master serves the slot of {key!r}")

    def replica_of(self, master: int) -> int:
        with redis.Redis(port=master, socket_timeout=2) as c:
            info = c.info("replication")
        return int(info["slave0"]["port"])

    def healthy(self) -> bool:
        """Every live node says the cluster is ok, every slot is served, and every master has a replica."""
        try:
            live = [n for n in self.nodes if n.process.poll() is None]
            if any(self.info(n.port).get("cluster_state") != "ok" for n in live):
                return False
            return self.info(live[0].port).get("cluster_slots_ok") == "16384"
        except (redis.RedisError, OSError):
            return False

    def flush(self) -> None:
        for port in self.masters():
            with redis.Redis(port=port, socket_timeout=5) as c:
                c.flushall()

    def kill(self, port: int) -> None:
        node = self.node(port)
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)

    def restart(self, port: int) -> None:
        """Start a killed node again on its port and directory: it rejoins (as a replica)."""
        node = self.node(port)
        restarted = start_redis(node.directory, port, *cluster_options(self.extra))
        node.process = restarted.process

    def stop(self) -> None:
        for n in self.nodes:
            stop_redis(n)


def cluster_options(extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    return ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-require-full-coverage", "no",
            # A replica takes over however long it was cut off: the tests kill masters on purpose.
            "--cluster-replica-validity-factor", "0",
            # A node coming back syncs at once, instead of the master waiting 5 s for more replicas.
            "--repl-diskless-sync-delay", "0", *extra)


def cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher, as Redis makes it) is free too."""
    while True:
        port = random.randint(20000, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


def start_cluster(directory: Path, masters: int = 3, replicas: int = 1, *extra: str) -> Cluster:
    cluster = Cluster(directory, [], extra)
    try:
        for i in range(masters * (1 + replicas)):
            cluster.nodes.append(start_redis(directory / f"node{i}", cluster_port(), *cluster_options(extra)))
        nodes = cluster.nodes
        cli("--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-replicas", str(replicas),
            "--cluster-yes")
        wait_for(cluster.healthy, 30, "the cluster to be ok on every node")
        wait_for(lambda: len(cluster.masters()) == masters, 30, "every master to serve its slots")
        if replicas:
            wait_for(lambda: all(replicas_synced(port) for port in cluster.masters()), 30, "replicas to sync")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def replicas_synced(port: int) -> bool:
    with redis.Redis(port=port, socket_timeout=2) as c:
        info = c.info("replication")
    return int(info.get("connected_slaves", 0)) >= 1 and all(
        v.get("state") == "online" for k, v in info.items() if k.startswith("slave") and isinstance(v, dict))


@dataclass
class SentinelGroup:
    directory: Path
    master: RedisServer
    replica: RedisServer
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports) + f"/{SERVICE}"

    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica]

    def master_port(self) -> int:
        with redis.Redis(port=self.sentinel_ports[0], socket_timeout=2) as c:
            _, port = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        return int(port)

    def server(self, port: int) -> RedisServer:
        return next(s for s in self.servers() if s.port == port)

    def flush(self) -> None:
        with redis.Redis(port=self.master_port(), socket_timeout=5) as c:
            c.flushall()

    def healthy(self) -> bool:
        """The master has its replica online and every sentinel agrees on the master."""
        try:
            port = self.master_port()
            answers = set()
            for p in self.sentinel_ports:
                with redis.Redis(port=p, socket_timeout=2) as c:
                    answers.add(int(c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)[1]))
            return answers == {port} and replicas_synced(port)
        except (redis.RedisError, OSError, TypeError):
            return False

    def kill(self, port: int) -> None:
        server = self.server(port)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)

    def restart(self, port: int, replica_of: int) -> None:
        server = self.server(port)
        server.process = start_redis(server.directory, port, "--replicaof", "127.0.0.1", str(replica_of),
                                     "--repl-diskless-sync-delay", "0").process

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.terminate()
                process.wait(10)
        stop_redis(self.replica)
        stop_redis(self.master)


def start_sentinel_group(directory: Path) -> SentinelGroup:
    master = start_redis(directory / "master", None, "--repl-diskless-sync-delay", "0")
    try:
        replica = start_redis(directory / "replica", None, "--replicaof", "127.0.0.1", str(master.port),
                              "--repl-diskless-sync-delay", "0")
    except BaseException:
        stop_redis(master)
        raise
    group = SentinelGroup(directory, master, replica)
    binary = shutil.which("redis-server")
    assert binary is not None
    try:
        for i in range(3):
            port = free_port()
            home = directory / f"sentinel{i}"
            home.mkdir(parents=True, exist_ok=True)
            config = home / "sentinel.conf"
            config.write_text("\n".join([
                f"port {port}", "bind 127.0.0.1", f"dir {home}", f"logfile {home / 'sentinel.log'}",
                f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 2",
                f"sentinel down-after-milliseconds {SERVICE} {NODE_TIMEOUT_MS}",
                f"sentinel failover-timeout {SERVICE} 5000",
                f"sentinel parallel-syncs {SERVICE} 1",
            ]) + "\n")
            group.sentinels.append(subprocess.Popen([binary, str(config), "--sentinel"],
                                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            group.sentinel_ports.append(port)
        wait_for(group.healthy, 30, "the sentinels to agree on the master and the replica to sync")
        # Every sentinel must know the others before a failover can be voted.
        wait_for(lambda: all(sentinels_known(p) >= 2 for p in group.sentinel_ports), 30, "the sentinels to meet")
    except BaseException:
        group.stop()
        raise
    return group


def sentinels_known(port: int) -> int:
    with redis.Redis(port=port, socket_timeout=2) as c:
        return int(dict(zip(*[iter(c.execute_command("SENTINEL", "MASTER", SERVICE))] * 2))[b"num-other-sentinels"])


def queues_on_every_master(cluster: Cluster, per_master: int = 2, prefix: str = "q") -> list[str]:
    """Queue names whose keys land on each master in turn (`per_master` per master)."""
    masters = cluster.masters()
    found: dict[int, list[str]] = {m: [] for m in masters}
    i = 0
    with redis.Redis(port=masters[0], socket_timeout=2) as c:
        slots = {port: cluster.slots_of(port) for port in masters}
        while any(len(v) < per_master for v in found.values()):
            name = f"{prefix}{i}"
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", "{" + name + "}"))
            owner = next(p for p, ranges in slots.items() if any(a <= slot <= b for a, b in ranges))
            if len(found[owner]) < per_master:
                found[owner].append(name)
            i += 1
    return [name for names in found.values() for name in names]
