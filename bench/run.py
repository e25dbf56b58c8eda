"""The benchmark: workqueue side by side with arq, SAQ, taskiq (taskiq-redis stream broker) and
Dramatiq, on one private redis-server, with one command from the repository root:

    python -m bench                      # or: python bench/run.py
    python -m bench --quick              # smoke test: small N, one round (< 2 minutes)
    python -m bench --jobs 20000 --rounds 3 --systems workqueue,saq --scenarios drain

Needs only Python 3.11 and redis-server on the PATH (and redis-cli for the scale scenario, which
also starts a private Redis Cluster of 3 masters under bench/.work/cluster for workqueue alone and
removes it after each round). This file uses the standard library only: it creates one virtualenv
per system under bench/.venvs (the peers' pins clash, with each other and with ours), starts its
own redis-server on a free port under bench/.work, and runs each measurement
in the systems' own environments, alternating systems round by round (the order rotates each
round) so machine noise hits them alike. After every run it checks that every job ran and nothing
is left in Redis, and aborts loudly otherwise. It writes bench/RESULTS.md, bench/results.json and
bench/results.png.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import hashlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENVS = BENCH / ".venvs"
WORK = BENCH / ".work"
REQUIREMENTS = BENCH / "requirements"


class BenchError(Exception):
    """Something is wrong with a run: the benchmark stops rather than report a doubtful number."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- a tiny Redis client (RESP2), so the orchestrator needs nothing installed ------------------

class Redis:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.file = self.sock.makefile("rb")

    def __call__(self, *args: Any) -> Any:
        parts = [str(a).encode() if not isinstance(a, bytes) else a for a in args]
        self.sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        return self.read()

    def read(self) -> Any:
        line = self.file.readline()
        if not line:
            raise BenchError("redis-server closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise BenchError(f"redis error: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)[:-2]
            return data.decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise BenchError(f"unexpected reply from redis: {line!r}")

    def info(self, section: str) -> dict[str, str]:
        out = {}
        for line in self("INFO", section).splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out

    def close(self) -> None:
        self.sock.close()


def redis_counters(r: Redis) -> dict[str, float]:
    """What a drain costs Redis: commands (all, and scripts), socket reads, CPU seconds."""
    stats = r.info("commandstats")
    calls: dict[str, int] = {}
    for name, value in stats.items():
        fields = dict(kv.split("=") for kv in value.split(","))
        calls[name.removeprefix("cmdstat_")] = int(fields["calls"])
    cpu = r.info("cpu")
    general = r.info("stats")
    return {
        "commands": sum(calls.values()),
        "scripts": sum(n for c, n in calls.items() if c in ("eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro")),
        "reads": int(general["total_reads_processed"]),
        "cpu": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        "calls": calls,  # type: ignore[dict-item]
    }


def counter_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    out = {k: after[k] - before[k] for k in ("commands", "scripts", "reads", "cpu")}
    calls = {c: n - before["calls"].get(c, 0) for c, n in after["calls"].items()}
    # The orchestrator's own INFO calls are not the system's.
    calls = {c: n for c, n in calls.items() if n > 0 and not c.startswith("info")}
    out["commands"] -= sum(n for c, n in after["calls"].items() if c.startswith("info")) - sum(
        n for c, n in before["calls"].items() if c.startswith("info"))
    out["calls"] = calls
    return out


# -- processes -----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


STARTED: list[subprocess.Popen[bytes]] = []


def spawn(cmd: list[str], logfile: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=WORK,
                                env={**os.environ, **(env or {})})
    STARTED.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc in STARTED:
        STARTED.remove(proc)
    return proc.returncode


def stop_together(procs: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> list[int]:
    """SIGTERM every process at once, then wait for each (SIGKILL past the timeout): their exit codes."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc in STARTED:
            STARTED.remove(proc)
    return [proc.returncode for proc in procs]


def stop_all() -> None:
    for proc in list(STARTED):
        stop(proc, 5.0)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_json(cmd: list[str], what: str, timeout: float, logfile: Path) -> dict[str, Any]:
    """Run a driver command; return the JSON of its `BENCH {...}` line, or abort with its output."""
    logfile.parent.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=WORK)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{what}: no answer within {timeout:.0f} s") from e
    logfile.write_text(done.stdout + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode != 0 or not lines:
        raise BenchError(f"{what} failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return json.loads(lines[-1][6:])


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of a process (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmHWM for pid {pid}")


def wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float, what: str, logfile: Path) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise BenchError(f"{what}: the worker exited with {proc.returncode} before finishing:\n{tail(logfile)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not finished within {timeout:.0f} s (jobs lost or stuck?):\n{tail(logfile)}")
        time.sleep(0.01)
    return json.loads(path.read_text())


def wait_http(url: str, proc: subprocess.Popen[bytes], logfile: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise BenchError(f"{url}: the server exited with {proc.returncode}:\n{tail(logfile)}")
        if time.monotonic() > deadline:
            raise BenchError(f"{url}: no answer within {timeout:.0f} s:\n{tail(logfile)}")
        time.sleep(0.05)


# -- a private Redis Cluster (the scale scenario) --------------------------------------------------

def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class Cluster:
    """A Redis Cluster of `masters` masters and no replicas, from the same redis-server binary, each
    node in its own directory under bench/.work/cluster, on free ports whose cluster bus port (port +
    10000) is free too. `nodes` lists the masters by the first slot they own (m1 owns slot 0)."""

    def __init__(self, masters: int) -> None:
        self.masters = masters
        self.directory = WORK / "cluster"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: list[int] = []
        self.nodes: list[tuple[str, int, Redis]] = []  # (m1.., port, client), by first slot
        self.ranges: dict[str, list[tuple[int, int]]] = {}  # master -> its slot ranges

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for _, p, _ in self.nodes)

    def start(self) -> None:
        binary = shutil.which("redis-server")
        cli = shutil.which("redis-cli")
        if binary is None or cli is None:
            raise BenchError("redis-server and redis-cli must be on the PATH for the cluster")
        if self.directory.exists():
            shutil.rmtree(self.directory)
        taken: set[int] = set()
        for _ in range(self.masters):
            for _attempt in range(1000):
                port = free_port()
                if port <= 55535 and not {port, port + 10000} & taken and port_free(port + 10000):
                    break
            else:
                raise BenchError("no free port pair (port, port + 10000) for a cluster node")
            taken |= {port, port + 10000}
            directory = self.directory / f"node-{port}"
            directory.mkdir(parents=True)
            proc = subprocess.Popen(
                [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                 "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(directory / "redis.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            STARTED.append(proc)
            self.procs.append(proc)
            self.ports.append(port)
        clients = {port: self.connect(port, proc) for port, proc in zip(self.ports, self.procs)}
        create = subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                                 "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
        if create.returncode != 0:
            raise BenchError(f"redis-cli --cluster create failed:\n{(create.stdout + create.stderr)[-2000:]}")
        deadline = time.monotonic() + 30
        while not all("cluster_state:ok" in r("CLUSTER", "INFO") for r in clients.values()):
            if time.monotonic() > deadline:
                raise BenchError("the cluster did not reach cluster_state:ok within 30 s")
            time.sleep(0.1)
        owned: dict[int, list[tuple[int, int]]] = {}
        for start, end, master, *_replicas in next(iter(clients.values()))("CLUSTER", "SLOTS"):
            owned.setdefault(int(master[1]), []).append((start, end))
        if set(owned) != set(self.ports):
            raise BenchError(f"CLUSTER SLOTS names masters {sorted(owned)}, expected {self.ports}")
        for i, port in enumerate(sorted(owned, key=lambda p: min(owned[p])), 1):
            self.nodes.append((f"m{i}", port, clients[port]))
            self.ranges[f"m{i}"] = sorted(owned[port])
        log(f"redis cluster: {self.masters} masters on 127.0.0.1:{', '.join(map(str, self.ports))} (ours, in {self.directory})")

    def connect(self, port: int, proc: subprocess.Popen[bytes]) -> Redis:
        deadline = time.monotonic() + 10
        while True:
            try:
                r = Redis(port)
                r("PING")
                return r
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"cluster node {port} did not start:\n"
                                     f"{tail(self.directory / f'node-{port}' / 'redis.log')}") from None
                time.sleep(0.05)

    def owner(self, slot: int) -> str:
        return next(m for m, ranges in self.ranges.items() if any(a <= slot <= b for a, b in ranges))

    def spread_queues(self, per_master: int) -> dict[str, str]:
        """Queue names q0, q1, ... in turn, each kept if its hash tag's slot is on a master that has
        fewer than `per_master` yet: name -> master."""
        r = self.nodes[0][2]
        chosen: dict[str, str] = {}
        for i in range(10_000):
            name = f"q{i}"
            master = self.owner(r("CLUSTER", "KEYSLOT", "{" + name + "}"))
            if list(chosen.values()).count(master) < per_master:
                chosen[name] = master
            if len(chosen) == per_master * len(self.nodes):
                return chosen
        raise BenchError("could not spread the queues over the masters")

    def flush(self) -> None:
        for _, _, r in self.nodes:
            r("FLUSHALL")

    def stop(self) -> None:
        for _, _, r in self.nodes:
            r.close()
        for proc in self.procs:
            stop(proc, 5.0)
        shutil.rmtree(self.directory, ignore_errors=True)
        log("redis cluster: stopped and removed")


# -- environments ----------------------------------------------------------------------------------

@dataclass
class Env:
    name: str
    python: Path
    packages: dict[str, str] = field(default_factory=dict)


def venv_python(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def install_venv(name: str, install_args: list[str], fingerprint: str) -> str:
    """Create bench/.venvs/<name> (again, if its requirements changed). Returns a status line."""
    target = VENVS / name
    stamp = target / ".bench-stamp"
    if stamp.exists() and stamp.read_text() == fingerprint and venv_python(name).exists():
        return f"{name}: up to date"
    if target.exists():
        shutil.rmtree(target)
    logfile = WORK / "setup" / f"{name}.log"
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with open(logfile, "w") as out:
        for cmd in ([sys.executable, "-m", "venv", str(target)],
                    [str(venv_python(name)), "-m", "pip", "install", "--disable-pip-version-check", "-q", *install_args]):
            if subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT).returncode != 0:
                raise BenchError(f"setting up the {name} environment failed ({' '.join(cmd)}):\n{tail(logfile)}")
    stamp.write_text(fingerprint)
    return f"{name}: installed"


def setup_envs(names: list[str], wq_python: str | None) -> dict[str, Env]:
    jobs: dict[str, tuple[list[str], str]] = {}
    for name in names:
        if name == "workqueue":
            if wq_python:
                continue
            pyproject = (ROOT / "pyproject.toml").read_bytes()
            jobs[name] = (["-e", str(ROOT)], hashlib.sha256(pyproject + sys.version.encode()).hexdigest())
        else:
            req = REQUIREMENTS / f"{name}.txt"
            jobs[name] = (["-r", str(req)], hashlib.sha256(req.read_bytes() + sys.version.encode()).hexdigest())
    if jobs:
        log(f"environments: {', '.join(jobs)} (first run: a few minutes of pip)")
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            for line in pool.map(lambda item: install_venv(item[0], *item[1]), jobs.items()):
                log("  " + line)
    envs = {}
    for name in names:
        python = Path(wq_python) if (name == "workqueue" and wq_python) else venv_python(name)
        listing = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m, json; "
             "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))"],
            capture_output=True, text=True, check=True)
        envs[name] = Env(name, python, json.loads(listing.stdout))
    return envs


# -- systems ---------------------------------------------------------------------------------------

SCENARIOS = ("drain", "sleep", "latency", "delayed", "enqueue", "scale")  # the default run, in this order
NOT_IN_QUICK = ("scale",)  # left out of --quick unless named in --scenarios


@dataclass
class System:
    key: str  # as in results
    label: str  # as in the report
    env: str  # virtualenv name
    driver: str  # bench/systems/<driver>
    variant: str = "default"
    scenarios: tuple[str, ...] = ("drain", "sleep", "latency", "delayed")
    delays: bool = True
    fill_clients: int = 50
    fill_note: str = ""


SYSTEMS = [
    System("workqueue", "workqueue", "workqueue", "workqueue_sys.py", variant="batch",
           scenarios=("drain", "sleep", "latency", "delayed", "enqueue", "scale"), fill_clients=2,
           fill_note="Queue.enqueue in-process, batches of 500, 2 concurrent"),
    System("workqueue-logging", "workqueue (default logging)", "workqueue", "workqueue_sys.py", variant="batch",
           scenarios=("drain",), fill_clients=2, fill_note="Queue.enqueue in-process, batches of 500, 2 concurrent"),
    System("arq", "arq", "arq", "arq_sys.py", fill_note="enqueue_job, 50 concurrent"),
    System("arq-poll10", "arq (poll_delay 10 ms)", "arq", "arq_sys.py", variant="poll10",
           fill_note="enqueue_job, 50 concurrent"),
    System("saq", "SAQ", "saq", "saq_sys.py", fill_note="Queue.enqueue, 50 concurrent"),
    System("taskiq", "taskiq (stream broker)", "taskiq", "taskiq_sys.py", delays=False,
           fill_note="kiq, 50 concurrent"),
    System("dramatiq", "Dramatiq (threads)", "dramatiq", "dramatiq_sys.py", fill_clients=4,
           fill_note="send, 4 threads (no batched enqueue)"),
]


@dataclass(frozen=True)
class Scale:
    """One configuration of the scale scenario (workqueue only)."""
    key: str
    label: str
    masters: int  # 0: the bench's one redis-server; else a Redis Cluster of that many masters
    workers: int  # worker processes, each with the drain's concurrency


SCALE = [
    Scale("server-1w", "one server, 1 worker process", 0, 1),
    Scale("server-2w", "one server, 2 worker processes", 0, 2),
    Scale("cluster3-2w", "Redis Cluster, 3 masters, 2 worker processes", 3, 2),
    Scale("cluster3-3w", "Redis Cluster, 3 masters, 3 worker processes", 3, 3),
]
SCALE_QUEUES_PER_MASTER = 2
SCALE_QUEUES = 6
# A worker process's slot in the shared timing file: as bench/benchlib.py's SLOT (done, last end,
# first start, CPU at the first start, ready).
SLOT = struct.Struct("<qdddq")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process, from /proc/<pid>/stat (as benchlib.cpu_seconds)."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Config:
    jobs: int
    rounds: int
    concurrency: int
    sleep_jobs: int
    latency_jobs: int
    rate: float
    delayed_jobs: int
    delay: float
    http_jobs: int
    http_connections: int
    wrk_seconds: float
    use_wrk: bool


class Bench:
    def __init__(self, cfg: Config, envs: dict[str, Env], systems: list[System], scenarios: list[str]) -> None:
        self.cfg = cfg
        self.envs = envs
        self.systems = systems
        self.scenarios = scenarios
        self.results: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in SCENARIOS}
        self.runs = 0
        self.verified = 0
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.r: Redis | None = None
        self.round = 0

    # -- redis ---------------------------------------------------------------------------------
    def start_redis(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not on the PATH (apt-get install redis-server)")
        directory = WORK / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.redis_proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(directory), "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--logfile", str(directory / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        STARTED.append(self.redis_proc)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.r = Redis(self.port)
                self.r("PING")
                break
            except OSError:
                if self.redis_proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"redis-server did not start:\n{tail(directory / 'redis.log')}") from None
                time.sleep(0.05)
        log(f"redis-server on 127.0.0.1:{self.port} (ours, in {directory})")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        assert self.r is not None
        self.r("FLUSHDB")

    # -- helpers ---------------------------------------------------------------------------------
    def driver(self, system: System, command: str, *extra: str, url: str | None = None) -> list[str]:
        return [str(self.envs[system.env].python), str(BENCH / "systems" / system.driver), command,
                "--redis", url or self.url, "--variant", system.variant, *extra]

    def logpath(self, system: System, scenario: str, what: str) -> Path:
        return WORK / "logs" / f"r{self.round}-{scenario}-{system.key}-{what}.log"

    def wq_config(self, quiet: bool) -> Path:
        name = "wq-quiet" if quiet else "wq-default"
        path = WORK / f"{name}.toml"
        logfile = WORK / f"{name}.log"
        lines = [f'log_path = "{logfile}"', f'plugin_dirs = ["{BENCH / "plugins"}"]']
        if quiet:
            lines += ['log_level = "warning"', 'log_exclude = ["started", "succeeded", "enqueued", "http_request"]']
        path.write_text("\n".join(lines) + "\n")
        if logfile.exists():
            logfile.unlink()
        return path

    def start_worker(self, system: System, scenario: str, expect: int, out: Path, warm: Path | None) -> tuple[subprocess.Popen[bytes], Path]:
        for p in (out, Path(str(out) + ".final")) + ((warm,) if warm else ()):
            if p.exists():
                p.unlink()
        env = {"BENCH_EXPECT": str(expect), "BENCH_OUT": str(out), "BENCH_WARM": str(warm or "")}
        logfile = self.logpath(system, scenario, "worker")
        if system.env == "workqueue":
            cmd = self.wq_worker_cmd(self.url, self.wq_config(quiet=system.key != "workqueue-logging"))
        else:
            cmd = self.driver(system, "worker", "--concurrency", str(self.cfg.concurrency))
        return spawn(cmd, logfile, env), logfile

    def wq_worker_cmd(self, url: str, config: Path, queues: list[str] | None = None) -> list[str]:
        """The real `python -m workqueue --role worker`, with the bench's drop-in plugin."""
        return [str(self.envs["workqueue"].python), "-m", "workqueue", "--role", "worker", "--redis", url,
                "--concurrency", str(self.cfg.concurrency), "--plugins", str(BENCH / "plugins"),
                "--config", str(config), "--port", str(free_port()),
                *(["--queues", ",".join(queues)] if queues else [])]

    def finish_worker(self, system: System, proc: subprocess.Popen[bytes], out: Path, logfile: Path, expect: int, what: str) -> int:
        """Stop the worker; returns how many handler runs there were beyond one per job."""
        code = stop(proc)
        final = Path(str(out) + ".final")
        extra = 0
        if final.exists():  # the peers' workers report their count at exit
            report = json.loads(final.read_text())
            done, distinct = report["done"], report.get("distinct", report["done"])
            if distinct != expect or done < expect:
                raise BenchError(f"{what}: the worker ran {done} jobs ({distinct} distinct), expected {expect}")
            extra = done - expect
            if extra:
                log(f"  note: {what}: {extra} job(s) ran twice (every job ran at least once)")
        if code not in (0, -signal.SIGTERM):
            log(f"  note: {what}: the worker exited with {code} after the run")
        return extra

    def settle(self, system: System, scenario: str, proc: subprocess.Popen[bytes], out: Path, logfile: Path,
               expect: int, total: int, what: str) -> dict[str, Any]:
        """After the N-th job's end: wait (worker still running) until Redis shows every job finished,
        since a system may record the last outcomes just after the handler returned; then stop the
        worker, and check again that nothing is left."""
        deadline = time.monotonic() + 30
        while True:
            answer = run_json(self.driver(system, "verify", "--n", str(total)), f"{what}: verify", 120,
                              self.logpath(system, scenario, "verify"))
            if answer.get("ok"):
                break
            if proc.poll() is not None:
                raise BenchError(f"{what}: the worker exited with {proc.returncode}, jobs unaccounted for: {answer}\n{tail(logfile)}")
            if time.monotonic() > deadline:
                stop(proc)
                raise BenchError(f"{what}: jobs unaccounted for in Redis 30 s after the last one ran: {answer}")
            time.sleep(0.2)
        extra = self.finish_worker(system, proc, out, logfile, expect, what)
        return {**self.verify(system, scenario, total, what), "extra_runs": extra}

    def verify(self, system: System, scenario: str, total: int, what: str) -> dict[str, Any]:
        answer = run_json(self.driver(system, "verify", "--n", str(total)), f"{what}: verify", 120,
                          self.logpath(system, scenario, "verify"))
        if not answer.get("ok"):
            raise BenchError(f"{what}: jobs unaccounted for in Redis after the run: {answer}")
        self.verified += 1
        return answer

    def record(self, scenario: str, system: System, data: dict[str, Any]) -> None:
        self.results[scenario].setdefault(system.key, []).append(data)
        self.runs += 1

    # -- scenarios ---------------------------------------------------------------------------------
    def drain(self, system: System) -> None:
        """N no-op jobs already queued; one worker process; rate first start to last end, in the worker."""
        n, what = self.cfg.jobs, f"drain {system.label}"
        assert self.r is not None
        self.flush()
        fill = run_json(self.driver(system, "fill", "--kind", "noop", "--n", str(n), "--clients", str(system.fill_clients)),
                        f"{what}: enqueue", 600, self.logpath(system, "drain", "fill"))
        out = WORK / "out" / f"{system.key}-drain.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        before = redis_counters(self.r)
        proc, logfile = self.start_worker(system, "drain", n, out, None)
        stamps = wait_file(out, proc, 60 + n / 100, what, logfile)
        rss = vm_hwm_mb(proc.pid)
        after = redis_counters(self.r)
        check = self.settle(system, "drain", proc, out, logfile, n, n, what)
        elapsed = stamps["last_end"] - stamps["first_start"]
        cost = counter_delta(before, after)
        data = {
            "rate": n / elapsed, "seconds": elapsed, "enqueue_rate": n / fill["seconds"],
            "rss_mb": rss, "cpu_per_10k": (stamps["cpu_last"] - stamps["cpu_first"]) / n * 10_000,
            "redis_commands_per_job": cost["commands"] / n, "redis_scripts_per_job": cost["scripts"] / n,
            "redis_reads_per_job": cost["reads"] / n, "redis_cpu_us_per_job": cost["cpu"] / n * 1e6,
            "redis_calls": cost["calls"], "verify": check, "extra_runs": check["extra_runs"],
        }
        self.record("drain", system, data)
        log(f"  drain    {system.label:<30} {data['rate']:>9,.0f} jobs/s   enqueue {data['enqueue_rate']:>9,.0f}/s   "
            f"rss {rss:5.1f} MB   cpu {data['cpu_per_10k']:.2f} s/10k   redis {data['redis_commands_per_job']:.2f} cmd/job")

    def sleep(self, system: System) -> None:
        n, what = self.cfg.sleep_jobs, f"sleep {system.label}"
        self.flush()
        run_json(self.driver(system, "fill", "--kind", "sleep", "--n", str(n), "--clients", str(system.fill_clients)),
                 f"{what}: enqueue", 600, self.logpath(system, "sleep", "fill"))
        out = WORK / "out" / f"{system.key}-sleep.json"
        proc, logfile = self.start_worker(system, "sleep", n, out, None)
        stamps = wait_file(out, proc, 60 + n / 20, what, logfile)
        check = self.settle(system, "sleep", proc, out, logfile, n, n, what)
        elapsed = stamps["last_end"] - stamps["first_start"]
        ideal = math.ceil(n / self.cfg.concurrency) * 0.01
        data = {"seconds": elapsed, "ideal": ideal, "overhead_ms": (elapsed - ideal) * 1000, "extra_runs": check["extra_runs"]}
        self.record("sleep", system, data)
        log(f"  sleep    {system.label:<30} {elapsed:7.3f} s (ideal {ideal:.2f} s, overhead {data['overhead_ms']:.0f} ms)")

    def steady(self, system: System, scenario: str, n: int, delay: float) -> None:
        what = f"{scenario} {system.label}"
        self.flush()
        out = WORK / "out" / f"{system.key}-{scenario}.json"
        warm = WORK / "out" / f"{system.key}-{scenario}.warm"
        proc, logfile = self.start_worker(system, scenario, n, out, warm)
        try:
            sent = run_json(self.driver(system, "steady", "--n", str(n), "--rate", str(self.cfg.rate), "--delay",
                                        str(delay), "--warm", str(warm)),
                            f"{what}: client", 120 + n / self.cfg.rate, self.logpath(system, scenario, "client"))
        except BenchError:
            stop(proc)
            raise
        stamps = wait_file(out, proc, 60 + delay + n / 50, what, logfile)
        check = self.settle(system, scenario, proc, out, logfile, n, n + 1, what)  # n + the warm-up job
        ms = sorted(s * 1000 for s in stamps["samples"])
        if len(ms) != n:
            raise BenchError(f"{what}: {len(ms)} samples for {n} jobs")
        data = {"p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99), "max_ms": ms[-1],
                "min_ms": ms[0], "client_rate": n / sent["seconds"],
                "call_p50_ms": sent["call_p50_ms"], "call_p99_ms": sent["call_p99_ms"], "extra_runs": check["extra_runs"]}
        self.record(scenario, system, data)
        log(f"  {scenario:<8} {system.label:<30} p50 {data['p50_ms']:8.2f} ms   p99 {data['p99_ms']:8.2f} ms   "
            f"(sent at {data['client_rate']:.0f}/s; enqueue calls p50 {data['call_p50_ms']:.2f} ms, p99 {data['call_p99_ms']:.2f} ms)")

    def latency(self, system: System) -> None:
        self.steady(system, "latency", self.cfg.latency_jobs, 0.0)

    def delayed(self, system: System) -> None:
        if system.delays:
            self.steady(system, "delayed", self.cfg.delayed_jobs, self.cfg.delay)

    def enqueue(self, system: System) -> None:
        """workqueue's other client paths: one job per Queue.enqueue call, HTTP single and arrays, and
        the bare-aiohttp ceiling, all driven by the same load generators."""
        cfg, wq = self.cfg, self.envs["workqueue"].python
        n = cfg.http_jobs
        rows: dict[str, float] = {}

        # In-process, one job per call (like the peers' per-job enqueue calls).
        self.flush()
        single = run_json([str(wq), str(BENCH / "systems" / "workqueue_sys.py"), "fill", "--redis", self.url,
                           "--variant", "single", "--kind", "noop", "--n", str(n), "--clients", "50"],
                          "enqueue workqueue single calls", 600, self.logpath(system, "enqueue", "single"))
        self.check_enqueued(system, n, n, "Queue.enqueue, one job per call")
        rows["inprocess_single"] = n / single["seconds"]

        # HTTP: the real producer.
        self.flush()
        port = free_port()
        logfile = self.logpath(system, "enqueue", "producer")
        producer = spawn([str(wq), "-m", "workqueue", "--role", "producer", "--redis", self.url, "--port", str(port),
                          "--config", str(self.wq_config(quiet=True)), "--plugins", str(BENCH / "plugins")], logfile)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", producer, logfile)
            url = f"http://127.0.0.1:{port}/enqueue"
            total = 0
            rows["http_single_aiohttp"] = self.loadgen(url, n, cfg.http_connections, 1, "HTTP single POST (workqueue)")
            total += n
            if cfg.use_wrk:
                rate, count = self.wrk(url, "HTTP single POST (workqueue, wrk)")
                rows["http_single_wrk"] = rate
                total += count
            rows["http_array500"] = self.loadgen(url, n, 4, 500, "HTTP arrays of 500 (workqueue)")
            total += n
        finally:
            stop(producer)
        slack = cfg.http_connections if cfg.use_wrk else 0  # wrk does not count requests cut off at its end
        self.check_enqueued(system, total, total + slack, "HTTP enqueue")

        # The ceiling: bare aiohttp, same JSON, 202.
        port = free_port()
        logfile = self.logpath(system, "enqueue", "ceiling")
        ceiling = spawn([str(wq), str(BENCH / "ceiling.py"), "--port", str(port)], logfile)
        try:
            wait_http(f"http://127.0.0.1:{port}/healthz", ceiling, logfile)
            url = f"http://127.0.0.1:{port}/enqueue"
            rows["ceiling_aiohttp"] = self.loadgen(url, n, cfg.http_connections, 1, "HTTP ceiling")
            if cfg.use_wrk:
                rows["ceiling_wrk"] = self.wrk(url, "HTTP ceiling (wrk)")[0]
        finally:
            stop(ceiling)
        self.record("enqueue", system, rows)
        log("  enqueue  " + "   ".join(f"{k} {v:,.0f}/s" for k, v in rows.items()))

    def check_enqueued(self, system: System, low: int, high: int, what: str) -> None:
        answer = run_json([str(self.envs["workqueue"].python), str(BENCH / "systems" / "workqueue_sys.py"), "verify",
                           "--redis", self.url, "--n", "0"], f"{what}: verify", 120, self.logpath(system, "enqueue", "verify"))
        if not (low <= (answer.get("enqueued") or 0) <= high and answer.get("waiting") == answer.get("enqueued")):
            raise BenchError(f"{what}: expected {low}..{high} jobs enqueued and waiting, Redis says {answer}")
        self.verified += 1

    def loadgen(self, url: str, n: int, connections: int, batch: int, what: str) -> float:
        answer = run_json([str(self.envs["workqueue"].python), str(BENCH / "loadgen.py"), "--url", url, "--jobs", str(n),
                           "--connections", str(connections), "--batch", str(batch)], what, 600,
                          WORK / "logs" / f"r{self.round}-loadgen.log")
        statuses = answer["statuses"]
        if set(statuses) != {"202"}:
            raise BenchError(f"{what}: answers other than 202: {statuses}")
        return n / answer["seconds"]

    def wrk(self, url: str, what: str) -> tuple[float, int]:
        cmd = ["wrk", "-t1", f"-c{self.cfg.http_connections}", f"-d{self.cfg.wrk_seconds:g}s", "-s",
               str(BENCH / "wrk_post.lua"), url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=self.cfg.wrk_seconds + 60)
        text = done.stdout
        if done.returncode != 0 or "Requests/sec" not in text:
            raise BenchError(f"{what}: wrk failed:\n{text}{done.stderr}")
        if "Non-2xx" in text or "Socket errors" in text:
            raise BenchError(f"{what}: wrk saw errors:\n{text}")
        count = int(next(line for line in text.splitlines() if "requests in" in line).split()[0])
        rate = float(next(line for line in text.splitlines() if line.startswith("Requests/sec")).split()[1])
        return rate, count

    # -- scale: worker processes and Redis Cluster masters (workqueue only) ----------------------------
    def scale(self, system: System) -> None:
        """The drain over 6 queues: one server with 1 and 2 worker processes, then a Redis Cluster of
        3 masters (2 queues each) with 2 and 3. The cluster is started for the round and removed after."""
        shift = (self.round - 1) % len(SCALE)
        order = SCALE[shift:] + SCALE[:shift]
        cluster = None
        t0 = time.monotonic()
        try:
            masters = {c.masters for c in order if c.masters}
            if masters:
                (count,) = masters
                cluster = Cluster(count)
                cluster.start()
            for c in order:
                self.scale_run(system, c, cluster if c.masters else None)
        finally:
            if cluster is not None:
                cluster.stop()
        log(f"  scale    round {self.round}: {time.monotonic() - t0:.0f} s with the cluster's start and stop")

    def scale_run(self, system: System, c: Scale, cluster: Cluster | None) -> None:
        n, what = self.cfg.jobs, f"scale {c.label}"
        assert self.r is not None
        if cluster is not None:
            url, placement = cluster.url, cluster.spread_queues(SCALE_QUEUES_PER_MASTER)
            nodes = [(name, r) for name, _, r in cluster.nodes]
            cluster.flush()
        else:
            url, placement = self.url, {f"q{i}": "server" for i in range(SCALE_QUEUES)}
            nodes = [("server", self.r)]
            self.flush()
        queues = list(placement)
        qarg = ["--queues", ",".join(queues)]
        fill = run_json(self.driver(system, "fill", "--kind", "noop", "--n", str(n), "--clients",
                                    str(system.fill_clients), *qarg, url=url),
                        f"{what}: enqueue", 600, self.logpath(system, "scale", f"{c.key}-fill"))
        shared = WORK / "out" / f"scale-{c.key}.slots"
        shared.parent.mkdir(parents=True, exist_ok=True)
        shared.write_bytes(bytes(SLOT.size * c.workers))
        outs = [WORK / "out" / f"scale-{c.key}-w{i}.json" for i in range(c.workers)]
        for out in outs:
            out.unlink(missing_ok=True)
        config = self.wq_config(quiet=True)
        before = [redis_counters(r) for _, r in nodes]
        procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        for i, out in enumerate(outs):
            logfile = self.logpath(system, "scale", f"{c.key}-worker{i + 1}")
            env = {"BENCH_EXPECT": str(n), "BENCH_OUT": str(out), "BENCH_WARM": "", "BENCH_SHARED": str(shared),
                   "BENCH_SLOT": str(i)}
            procs.append((spawn(self.wq_worker_cmd(url, config, queues), logfile, env), logfile))
        try:
            timeout = 60 + n / 100
            deadline = time.monotonic() + timeout
            while not (any(out.exists() for out in outs)
                       and sum(SLOT.unpack_from(shared.read_bytes(), i * SLOT.size)[0] for i in range(c.workers)) >= n):
                for proc, logfile in procs:
                    if proc.poll() is not None:
                        raise BenchError(f"{what}: a worker exited with {proc.returncode} before the end:\n{tail(logfile)}")
                if time.monotonic() > deadline:
                    raise BenchError(f"{what}: not finished within {timeout:.0f} s (jobs lost or stuck?):\n"
                                     f"{tail(procs[0][1])}")
                time.sleep(0.005)
            cpu_now = [proc_cpu_seconds(proc.pid) for proc, _ in procs]
            after = [redis_counters(r) for _, r in nodes]
            raw = shared.read_bytes()
            slots = [SLOT.unpack_from(raw, i * SLOT.size) for i in range(c.workers)]
            check = self.scale_settle(system, [p for p, _ in procs], url, queues, n, what)
        finally:
            stop_together([proc for proc, _ in procs])
        done = [s[0] for s in slots]
        first_start = min(s[2] for s in slots)
        last_end = max(s[1] for s in slots)
        cpu = 0.0
        for i, out in enumerate(outs):
            # The process whose job was the N-th wrote its own CPU then; the others' is read from /proc just after.
            cpu_last = json.loads(out.read_text())["cpu_last"] if out.exists() else cpu_now[i]
            cpu += cpu_last - slots[i][3]
        if min(done) == 0 or first_start <= 0:
            raise BenchError(f"{what}: a worker process ran no job ({done})")
        elapsed = last_end - first_start
        costs = {name: counter_delta(b, a) for (name, _), b, a in zip(nodes, before, after)}
        data: dict[str, Any] = {
            "rate": n / elapsed, "seconds": elapsed, "enqueue_rate": n / fill["seconds"],
            "workers": c.workers, "masters": c.masters, "cpu_per_10k": cpu / n * 10_000,
            "redis_cpu_us_per_job": sum(cost["cpu"] for cost in costs.values()) / n * 1e6,
            "redis_commands_per_job": sum(cost["commands"] for cost in costs.values()) / n,
            **{f"redis_cpu_us_per_job_{name}": cost["cpu"] / n * 1e6 for name, cost in costs.items()},
            "jobs_per_worker": done, "placement": placement, "extra_runs": max(0, sum(done) - n), "verify": check,
        }
        if cluster is not None:
            data["slot_ranges"] = cluster.ranges
        self.results["scale"].setdefault(c.key, []).append(data)
        self.runs += 1
        per_redis = " / ".join(f"{data[f'redis_cpu_us_per_job_{name}']:.1f}" for name in costs)
        log(f"  scale    {c.label:<46} {data['rate']:>9,.0f} jobs/s   worker cpu {data['cpu_per_10k']:.2f} s/10k   "
            f"redis cpu {per_redis} µs/job   {data['redis_commands_per_job']:.2f} cmd/job   jobs per worker {done}")

    def scale_settle(self, system: System, procs: list[subprocess.Popen[bytes]], url: str, queues: list[str],
                     total: int, what: str) -> dict[str, Any]:
        """As settle(): wait (workers running) until Redis shows every job finished on every queue,
        stop the workers, and check again."""
        cmd = self.driver(system, "verify", "--n", str(total), "--queues", ",".join(queues), url=url)
        logfile = self.logpath(system, "scale", "verify")
        deadline = time.monotonic() + 30
        while not (answer := run_json(cmd, f"{what}: verify", 120, logfile)).get("ok"):
            if any(p.poll() is not None for p in procs):
                raise BenchError(f"{what}: a worker exited, jobs unaccounted for: {answer}")
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: jobs unaccounted for in Redis 30 s after the last one ran: {answer}")
            time.sleep(0.2)
        for code in stop_together(procs):
            if code not in (0, -signal.SIGTERM):
                log(f"  note: {what}: a worker exited with {code} after the run")
        answer = run_json(cmd, f"{what}: verify", 120, logfile)
        if not answer.get("ok"):
            raise BenchError(f"{what}: jobs unaccounted for in Redis after the run: {answer}")
        self.verified += 1
        return answer

    # -- the whole run ---------------------------------------------------------------------------------
    def run(self) -> None:
        for number in range(1, self.cfg.rounds + 1):
            self.round = number
            log(f"round {self.round} of {self.cfg.rounds}")
            shift = (self.round - 1) % len(self.systems)
            order = self.systems[shift:] + self.systems[:shift]
            for scenario in self.scenarios:
                for system in order:
                    if scenario in system.scenarios:
                        getattr(self, scenario)(system)
        self.flush()


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


# -- the report ------------------------------------------------------------------------------------

def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def aggregate(results: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for scenario, by_system in results.items():
        for key, runs in by_system.items():
            metrics = {m for run in runs for m, v in run.items() if isinstance(v, (int, float))}
            out.setdefault(scenario, {})[key] = {m: summary([run[m] for run in runs if m in run]) for m in sorted(metrics)}
    return out


def machine() -> dict[str, str]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal"))
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.strip()
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "workqueue"],
                           capture_output=True, text=True).stdout.strip()
    return {
        "cpus": str(os.cpu_count()), "cpu_model": model, "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(), "python": platform.python_version(),
        "redis_server": redis_version.split(" sha=")[0], "workqueue_commit": git + (" (workqueue/ modified)" if dirty else ""),
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def fmt(v: float, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:,.{digits}f}"


def cell(s: dict[str, float] | None, digits: int = 0) -> str:
    if s is None:
        return "n/a"
    if s["n"] == 1:
        return fmt(s["median"], digits)
    return f"**{fmt(s['median'], digits)}** ({fmt(s['min'], digits)} – {fmt(s['max'], digits)})"


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    q = a / b
    return f"{q:.2f}×" if q < 10 else f"{q:.1f}×" if q < 100 else f"{q:,.0f}×"


PACKAGES = {
    "workqueue": ["workqueue", "redis", "hiredis", "aiohttp", "orjson"],
    "arq": ["arq", "redis", "hiredis"],
    "saq": ["saq", "redis", "hiredis"],
    "taskiq": ["taskiq", "taskiq-redis", "redis", "hiredis"],
    "dramatiq": ["dramatiq", "redis", "hiredis"],
    "report": ["matplotlib"],
}

ENQUEUE_ROWS = [
    ("inprocess_batch", "workqueue: Queue.enqueue in-process, batches of 500"),
    ("inprocess_single", "workqueue: Queue.enqueue in-process, one job per call, 50 concurrent"),
    ("http_array500", "workqueue: HTTP POST /enqueue, arrays of 500 (aiohttp client, 4 connections)"),
    ("http_single_wrk", "workqueue: HTTP POST /enqueue, one job per request (wrk, 1 thread)"),
    ("http_single_aiohttp", "workqueue: HTTP POST /enqueue, one job per request (aiohttp client)"),
    ("ceiling_wrk", "ceiling: bare aiohttp, parse JSON, 202 (wrk, 1 thread)"),
    ("ceiling_aiohttp", "ceiling: bare aiohttp, parse JSON, 202 (aiohttp client)"),
]


def enqueue_summary(agg: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Every client path's enqueue rate: workqueue's from 'enqueue' (and its drain fill), peers' from their drain fill."""
    rows: dict[str, dict[str, float]] = {}
    drain = agg.get("drain", {})
    if "workqueue" in drain:
        rows["inprocess_batch"] = drain["workqueue"]["enqueue_rate"]
    for key, s in agg.get("enqueue", {}).get("workqueue", {}).items():
        rows[key] = s
    for system in SYSTEMS:
        if system.key in drain and not system.key.startswith("workqueue") and system.key != "arq-poll10":
            rows[system.key] = drain[system.key]["enqueue_rate"]
    return rows


def write_report(path: Path, agg: dict[str, Any], cfg: Config, envs: dict[str, Env], info: dict[str, str],
                 started: dt.datetime, seconds: float, command: str, runs: int, verified: int,
                 raw: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    labels = {s.key: s.label for s in SYSTEMS} | {c.key: f"workqueue ({c.label})" for c in SCALE}
    order = [s.key for s in SYSTEMS]
    L: list[str] = []
    add = L.append
    add("# workqueue benchmark results\n")
    add(f"Generated by `{command}` on {started:%Y-%m-%d %H:%M} UTC, in {seconds / 60:.1f} minutes; "
        f"{runs} measurements, every one verified (every job ran, nothing left in Redis): {verified} checks.\n")
    add("Each cell is the **median** of the rounds, with (min – max). Systems alternate within each round and "
        "their order rotates from round to round, so machine noise hits them alike. Ratio columns compare medians "
        "and read as how many times better workqueue is (> 1: workqueue better): workqueue / system for rates, "
        "system / workqueue for times.\n")
    add("## Machine and versions\n")
    add(f"- {info['cpus']} CPUs, {info['cpu_model']}, {info['memory']} memory, Linux {info['kernel']}; "
        f"load average at start {info['loadavg']}" + (f", at the end {info['loadavg_end']}" if info.get("loadavg_end") else "")
        + " (other work shares this machine)")
    add(f"- Python {info['python']}, {info['redis_server']} (a private server on 127.0.0.1, no persistence)")
    add(f"- workqueue at commit {info['workqueue_commit']}")
    for env_name, names in PACKAGES.items():
        if env_name in envs:
            pk = envs[env_name].packages
            add(f"- `{env_name}` environment: " + ", ".join(f"{n} {pk[n]}" for n in names if n in pk))
    add("")
    add(f"Parameters: drain N = {cfg.jobs:,}, {cfg.concurrency} concurrent slots in one worker process, "
        f"{cfg.rounds} round(s); sleep {cfg.sleep_jobs:,} jobs; latency {cfg.latency_jobs:,} jobs at {cfg.rate:g}/s; "
        f"delayed {cfg.delayed_jobs:,} jobs at {cfg.rate:g}/s, each delayed {cfg.delay:g} s; HTTP {cfg.http_jobs:,} jobs, "
        f"{cfg.http_connections} connections" + (f", wrk {cfg.wrk_seconds:g} s" if cfg.use_wrk else " (wrk not installed)") + ".\n")

    def section(title: str, scenario: str, metric: str, unit: str, higher_better: bool, digits: int = 0,
                extra: list[tuple[str, str, int]] | None = None, note: str = "",
                ratio_of: tuple[str, ...] = ()) -> None:
        ratio_of = ratio_of or (metric,)
        data = agg.get(scenario, {})
        if not data:
            return
        add(f"## {title}\n")
        metrics = [(metric, unit, digits)] + list(extra or [])
        rated = [(name, u) for name, u, _ in metrics if name in ratio_of]
        head = "workqueue / system" if higher_better else "system / workqueue"
        heads = [u for _, u, _ in metrics] + [head if len(rated) == 1 else f"{head} ({u})" for _, u in rated]
        add("| system | " + " | ".join(heads) + " |")
        add("|---|" + "---:|" * len(heads))
        for key in order:
            if key not in data:
                continue
            cells = [cell(data[key].get(name), d) for name, _, d in metrics]
            for name, _ in rated:
                a = data.get("workqueue", {}).get(name, {}).get("median")
                b = data[key].get(name, {}).get("median")
                cells.append("—" if key == "workqueue" else ratio(a, b) if higher_better else ratio(b, a))
            add(f"| {labels[key]} | " + " | ".join(cells) + " |")
        for s in SYSTEMS:
            if scenario == "delayed" and not s.delays and s.key not in data:
                add(f"| {s.label} | " + " | ".join(["n/a"] * len(heads)) + " |")
        add("")
        if note:
            add(note + "\n")

    section("Drain: 20,000 queued no-op jobs, one worker process, 100 slots" if cfg.jobs == 20000 else
            f"Drain: {cfg.jobs:,} queued no-op jobs, one worker process, {cfg.concurrency} slots",
            "drain", "rate", "jobs/s", True,
            note="Rate from the first job's start to the last job's end, both taken inside the worker's handler. "
                 "workqueue (default logging) is the same worker with the default log settings (a `started` and a "
                 "`succeeded` line per job): the cost of logging.")

    ideal = math.ceil(cfg.sleep_jobs / cfg.concurrency) * 0.01
    section(f"Sleep: {cfg.sleep_jobs:,} jobs of asyncio.sleep(0.01) at {cfg.concurrency} slots",
            "sleep", "seconds", "seconds, first start to last end", False, 3,
            extra=[("overhead_ms", "ms over the ideal", 0)],
            note=f"Ideal: {ideal:.2f} s. The ratio compares the times. Dramatiq's handler is time.sleep(0.01) on its threads.")

    # Enqueue.
    rows = enqueue_summary(agg)
    if rows:
        add("## Enqueue: each system's fastest client path\n")
        wq_paths = [k for k in ("inprocess_batch", "inprocess_single", "http_array500") if k in rows]
        best = max((rows[k]["median"] for k in wq_paths), default=None)
        per_job = rows.get("inprocess_single", {}).get("median")
        add("| client path | jobs/s | workqueue's fastest path / this | workqueue one job per call / this |")
        add("|---|---:|---:|---:|")
        for key, label in ENQUEUE_ROWS:
            if key in rows:
                add(f"| {label} | {cell(rows[key])} | — | — |")
        for s in SYSTEMS:
            if s.key in rows:
                add(f"| {s.label}: {s.fill_note} | {cell(rows[s.key])} | {ratio(best, rows[s.key]['median'])} | "
                    f"{ratio(per_job, rows[s.key]['median'])} |")
        add("")
        add(f"The in-process and peer rates are measured while filling the drain's queue ({cfg.jobs:,} jobs; "
            f"workqueue's one-job-per-call and HTTP rows: {cfg.http_jobs:,} jobs). The HTTP rows post to a "
            "`--role producer` process (log_level warning) and count only 202 answers; the ceiling rows drive "
            "bench/ceiling.py, a bare aiohttp app that parses the same JSON and answers 202, with the same load "
            "generators. Load generator and server share the 2 cores.")
        cw, ca = rows.get("ceiling_wrk", {}).get("median"), rows.get("ceiling_aiohttp", {}).get("median")
        if cw and ca and ca < 0.8 * cw:
            add(f"The Python load generator (bench/loadgen.py) is itself the bottleneck here (its ceiling, {ca:,.0f} "
                f"req/s, is below wrk's, {cw:,.0f}): the wrk rows are the meaningful single-POST figures.")
        add("")

    section(f"Latency: enqueue to start at a steady {cfg.rate:g} jobs/s, idle worker", "latency", "p50_ms",
            "p50 ms", False, 2, extra=[("p99_ms", "p99 ms", 2)], ratio_of=("p50_ms", "p99_ms"),
            note="Start time taken in the handler; enqueue time taken by the client just before its enqueue call "
                 "(each job is its own enqueue call). arq's default worker polls every 0.5 s.")
    section(f"Delayed jobs: {cfg.delayed_jobs:,} jobs delayed {cfg.delay:g} s, enqueued at {cfg.rate:g}/s: how late they start",
            "delayed", "p50_ms", "p50 ms late", False, 1, extra=[("p99_ms", "p99 ms late", 1)], ratio_of=("p50_ms", "p99_ms"),
            note="Due time = the client's clock just before the enqueue call + the delay. workqueue `delay`, arq "
                 "`_defer_by`, SAQ `scheduled` (its worker polls for due jobs every second, behind a 1 s lock), Dramatiq "
                 "`send_with_options(delay=...)` (the worker holds the message until its time, then requeues it, and "
                 "an idle consumer polls with a growing backoff of up to 1 s); "
                 "taskiq has no per-job delay (it needs its separate scheduler process and a schedule source): n/a.")

    data = agg.get("drain", {})
    if data:
        add("## Cost during the drain\n")
        add("| system | peak RSS (MB) | worker CPU s / 10k jobs | Redis commands / job (incl. inside scripts) | "
            "of which script calls / job | Redis socket reads / job | Redis CPU µs / job | "
            "worker CPU: system / workqueue | Redis CPU: system / workqueue |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        wq = data.get("workqueue", {})
        for key in order:
            if key in data:
                d = data[key]
                ratios = ["—", "—"] if key == "workqueue" else [
                    ratio(d[m]["median"], wq[m]["median"]) if m in wq else "n/a"
                    for m in ("cpu_per_10k", "redis_cpu_us_per_job")]
                add(f"| {labels[key]} | {cell(d['rss_mb'], 1)} | {cell(d['cpu_per_10k'], 2)} | "
                    f"{cell(d['redis_commands_per_job'], 2)} | {cell(d['redis_scripts_per_job'], 3)} | "
                    f"{cell(d['redis_reads_per_job'], 3)} | {cell(d['redis_cpu_us_per_job'], 1)} | "
                    f"{ratios[0]} | {ratios[1]} |")
        add("")
        cpu, rate = wq.get("cpu_per_10k", {}).get("median"), wq.get("rate", {}).get("median")
        rcpu = wq.get("redis_cpu_us_per_job", {}).get("median")
        if cpu and rate and rcpu:
            w, r = cpu / 10_000, rcpu / 1e6
            add(f"workqueue's worker used {w * 1e6:.0f} µs of CPU per job and Redis {r * 1e6:.0f} µs, so at its median "
                f"drain rate the worker kept {w * rate:.0%} of a core busy and Redis {r * rate:.0%}: neither is saturated. "
                f"rate × (worker + Redis CPU per job) = {rate * (w + r):.2f}, i.e. the two mostly take turns rather than "
                f"overlap; overlapping them would allow up to about 1 / max(worker, Redis) = {1 / max(w, r):,.0f} jobs/s "
                "with the same work per job. CPU per job is also the figure least moved by other load on the machine.\n")
        add("Peak RSS is the worker's VmHWM; worker CPU is user + system time from /proc/self/stat read by the "
            "handler at the first start and the last end; Redis figures are INFO commandstats / stats / cpu deltas "
            "from just before the worker starts to its last job (so they include its start-up). Commands run inside "
            "Lua scripts count in commandstats; socket reads approximate client round trips.\n")

    scale_section(add, agg.get("scale", {}), raw.get("scale", {}), cfg, info["cpus"])

    # Targets of issue 6.
    add("## Targets of issue 6\n")
    add("| target | measured (median) | met |")
    add("|---|---:|:---:|")

    def med(scenario: str, key: str, metric: str) -> float | None:
        return agg.get(scenario, {}).get(key, {}).get(metric, {}).get("median")

    wq = med("drain", "workqueue", "rate")
    saq = med("drain", "saq", "rate")
    peers = {k: med("drain", k, "rate") for k in ("arq", "arq-poll10", "saq", "taskiq", "dramatiq")}
    peers = {k: v for k, v in peers.items() if v}

    def target(name: str, value: float | None, text: str, ok: bool | None) -> None:
        add(f"| {name} | {text if value is not None else 'n/a'} | {'n/a' if ok is None or value is None else ('yes' if ok else '**no**')} |")

    if wq and saq:
        target("drain ≥ 10× SAQ", wq / saq, f"{wq / saq:.1f}×", wq / saq >= 10)
    if wq and peers:
        best = max(peers, key=lambda k: peers[k])
        target("drain ≥ 3× the fastest other peer", wq / peers[best], f"{wq / peers[best]:.1f}× ({labels[best]})",
               wq / peers[best] >= 3)
    target("drain toward 25,000 jobs/s", wq, f"{fmt(wq)} jobs/s", (wq or 0) >= 25000)
    enq = enqueue_summary(agg)
    arr = enq.get("http_array500", {}).get("median")
    target("HTTP batch enqueue ≥ 50,000 jobs/s", arr, f"{fmt(arr)} jobs/s", (arr or 0) >= 50000)
    for gen, single_key, ceiling_key in (("wrk", "http_single_wrk", "ceiling_wrk"), ("aiohttp client", "http_single_aiohttp", "ceiling_aiohttp")):
        s, c = enq.get(single_key, {}).get("median"), enq.get(ceiling_key, {}).get("median")
        if s and c:
            target(f"single POST ≥ 70% of the bare aiohttp ceiling ({gen})", s / c, f"{s / c:.0%} ({fmt(s)} / {fmt(c)})", s / c >= 0.7)
    p50, p99 = med("latency", "workqueue", "p50_ms"), med("latency", "workqueue", "p99_ms")
    target("enqueue-to-start p50 ≤ 2 ms", p50, f"{fmt(p50, 2)} ms", (p50 or 1e9) <= 2)
    target("enqueue-to-start p99 ≤ 10 ms", p99, f"{fmt(p99, 2)} ms", (p99 or 1e9) <= 10)
    late = med("delayed", "workqueue", "p99_ms")
    target("delayed lateness p99 ≤ 100 ms", late, f"{fmt(late, 1)} ms", (late or 1e9) <= 100)
    cmds = med("drain", "workqueue", "redis_commands_per_job")
    reads = med("drain", "workqueue", "redis_reads_per_job")
    target("≤ 3 Redis commands per job (amortised)", cmds,
           f"{fmt(cmds, 2)} incl. inside scripts; {fmt(reads, 3)} round trips", (cmds or 1e9) <= 3)
    rss = med("drain", "workqueue", "rss_mb")
    target("worker RSS ≤ 60 MB", rss, f"{fmt(rss, 1)} MB", (rss or 1e9) <= 60)
    add("")

    # What each system's Redis work looks like.
    if data:
        add("## Redis commands per job during the drain, by command\n")
        add("(medians; commands under 0.01 per job left out)\n")
        for key in order:
            if key in data:
                calls = [(c.removeprefix("redis_call_"), s["median"]) for c, s in data[key].items() if c.startswith("redis_call_")]
                calls = sorted(((c, v) for c, v in calls if v >= 0.01), key=lambda cv: -cv[1])
                add(f"- {labels[key]}: " + ", ".join(f"{c} {v:.2f}" for c, v in calls))
        add("")
    add("## How it is measured\n")
    add("`python -m bench` (bench/run.py) starts its own redis-server on a free port, creates one virtualenv per "
        "system under bench/.venvs with the exact pins of bench/requirements/ (workqueue's: `pip install -e .`), "
        "and runs each scenario for every system before the next scenario, FLUSHDB between runs:\n")
    add("1. **drain**: the system's fastest client enqueues N no-op jobs (that is the enqueue rate), then one "
        "worker process with 100 slots starts: workqueue's is the real `python -m workqueue --role worker "
        "--concurrency 100 --plugins bench/plugins` (plugin bench/plugins/benchtasks, log_level warning), the "
        "peers' run their own worker class in-process exactly as their CLIs do in each worker process (arq Worker, "
        "SAQ Worker, taskiq run_receiver_task, dramatiq.Worker with 100 threads), with their default settings "
        "and Python logging unconfigured. The handler counts and writes one file when the N-th job ends.")
    add("2. **sleep**: the same with jobs that sleep 10 ms.")
    add("3. **latency** / **delayed**: an idle worker (warmed up by one job), then a client enqueues one job "
        "at a time at a steady rate, each as its own task; the handler records start − due.")
    add("4. **enqueue**: workqueue's HTTP paths against a `--role producer` process and the bare aiohttp "
        "ceiling (bench/ceiling.py), with bench/loadgen.py (aiohttp client) and wrk when installed.")
    add("\nAfter every run the driver checks Redis: workqueue's counters say N done and nothing waiting, active, "
        "scheduled or dead; arq: queue empty, nothing in progress, N results; SAQ: nothing queued, active or "
        "incomplete, and N job records none of them unfinished; taskiq: the group's pending count and lag are 0 "
        "and it read N entries; Dramatiq: queue, message hash, delay queue and ack sets empty. The orchestrator "
        "waits (worker still running) until that holds, then stops the worker and checks again. Peers' workers also "
        "report their handler count at exit, which must be at least N (SAQ's handlers also keep job keys: N "
        "distinct). Any shortfall aborts the benchmark.\n")
    extras = [(labels[k], sc, int(sum(r.get("extra_runs", 0) for r in runs)), len(runs))
              for sc, by in raw.items() for k, runs in by.items() if any(r.get("extra_runs") for r in runs)]
    if extras:
        add("Jobs that ran more than once (every job ran at least once; a system's own at-least-once behaviour): " +
            "; ".join(f"{name}, {sc}: {n} extra run(s) in {m} run(s)" for name, sc, n, m in extras) + ". SAQ's "
            "start-up sweep aborts and retries a job its worker has just moved to the active list before marking it "
            "active, so with jobs already queued a job can run twice.\n")
    text = "\n".join(L)
    path.write_text(text)
    return text


def scale_section(add: Any, data: dict[str, Any], raw: dict[str, list[dict[str, Any]]], cfg: Config, cpus: str) -> None:
    """The scale scenario's table (absent from older results.json files: then nothing)."""
    if not data:
        return
    add("## Scale: worker processes and Redis Cluster masters\n")
    add(f"workqueue only (the peers do not support Redis Cluster). {cfg.jobs:,} queued no-op jobs spread round-robin "
        f"over {SCALE_QUEUES} queues, drained by worker processes each serving all {SCALE_QUEUES} queues with "
        f"{cfg.concurrency} slots (`python -m workqueue --role worker --queues ...`, log_level warning), started together; "
        "on one server (the bench's redis-server) or on a private Redis Cluster of 3 masters without replicas, whose "
        f"queue names are picked so that each master holds {SCALE_QUEUES_PER_MASTER} queues.\n")
    base = data.get("server-1w", {}).get("rate", {}).get("median")
    add("| configuration | jobs/s | ratio to 1 process on one server | worker CPU s / 10k jobs (all worker processes) | "
        "Redis CPU µs / job, per Redis process | total Redis CPU µs / job | Redis commands / job |")
    add("|---|---:|---:|---:|---:|---:|---:|")
    for c in SCALE:
        if c.key not in data:
            continue
        d = data[c.key]
        names = sorted(m.removeprefix("redis_cpu_us_per_job_") for m in d if m.startswith("redis_cpu_us_per_job_"))
        per = " / ".join(f"{n} {fmt(d[f'redis_cpu_us_per_job_{n}']['median'], 1)}" if n != "server" else
                         fmt(d[f"redis_cpu_us_per_job_{n}"]["median"], 1) for n in names)
        rate = d["rate"]["median"]
        add(f"| {c.label} | {cell(d['rate'])} | {'—' if c.key == 'server-1w' else ratio(rate, base)} | "
            f"{cell(d['cpu_per_10k'], 2)} | {per} | {cell(d['redis_cpu_us_per_job'], 1)} | "
            f"{cell(d.get('redis_commands_per_job'), 2)} |")
    add("")
    placement = next((run for c in SCALE if c.masters for run in raw.get(c.key, []) if run.get("slot_ranges")), None)
    if placement:
        by_master: dict[str, list[str]] = {}
        for queue, master in placement["placement"].items():
            by_master.setdefault(master, []).append(queue)
        add("Queues on the cluster's masters: " + "; ".join(
            f"{m} (slots {', '.join(f'{a}–{b}' for a, b in placement['slot_ranges'][m])}): {', '.join(qs)}"
            for m, qs in sorted(by_master.items())) + ". One server: q0–q5.\n")
    add("Rate from the first job's start in any worker process to the last job's end in any, taken in the handlers: "
        "each process keeps its count, first start and last end in its own slot of a shared file, the first job of "
        "each process waits until every process has its first job (so start-up skew between processes is not "
        "measured), and the process whose job is the N-th overall writes its file. Worker CPU is each process's "
        "user + system time from its first job to the end (the last process's own reading; the others' read from "
        "/proc just after), summed over the processes. Redis CPU is INFO cpu (used_cpu_sys + used_cpu_user) per "
        "Redis process, from just before the workers start to the last job; commands are INFO commandstats summed "
        "over the Redis processes. After every run the orchestrator checks every queue in Redis (through "
        "redis+cluster:// for the cluster): N done in all and nothing waiting, active, scheduled or dead.\n")
    server = data.get("server-1w", {}).get("redis_cpu_us_per_job", {}).get("median")
    busiest = max((v["median"] for c in SCALE if c.masters and c.key in data
                   for m, v in data[c.key].items() if m.startswith("redis_cpu_us_per_job_m")), default=None)
    worker = data.get("server-1w", {}).get("cpu_per_10k", {}).get("median")
    busy = [(c.label, d["rate"]["median"] * (d["cpu_per_10k"]["median"] / 1e4 + d["redis_cpu_us_per_job"]["median"] / 1e6))
            for c in SCALE if (d := data.get(c.key))]
    add(f"What this machine can and cannot show: every process (worker processes, Redis processes) shares the same "
        f"{cpus} cores, so once they are busy more processes cannot raise jobs/s: the rates above show how the "
        "processes share these cores, not how workqueue scales on a machine with a core per process. Cores kept busy "
        "(rate × (worker + Redis CPU per job)): " + "; ".join(f"{label} {b:.2f}" for label, b in busy) + ". "
        "The transferable figures are the CPU per job: each Redis master's and the worker processes'.")
    if server and busiest and worker:
        add(f"From CPU alone, with a core per process: one server would saturate at about {1e6 / server:,.0f} jobs/s "
            f"(1 / {server:.1f} µs), a 3-master cluster at about {1e6 / busiest:,.0f} jobs/s (its busiest master's "
            f"{busiest:.1f} µs per job of the whole drain), and each worker process adds about {1e4 / worker:,.0f} jobs/s "
            f"(1 / {worker / 1e4 * 1e6:.0f} µs, one server, 1 process); these are upper bounds that ignore round trips and waiting.")
    add("")


def flatten_calls(results: dict[str, dict[str, list[dict[str, Any]]]]) -> None:
    """Per-command Redis call counts per job become numeric metrics, so they aggregate like the rest."""
    for runs in results.get("drain", {}).values():
        for run in runs:
            n = run["rate"] * run["seconds"]
            for c, calls in run.get("redis_calls", {}).items():
                run[f"redis_call_{c}"] = calls / n


# -- the command -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20000, help="jobs in the drain (default 20000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each figure is the median (default 3)")
    p.add_argument("--quick", action="store_true", help="smoke test: small N, one round")
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--sleep-jobs", type=int, default=2000)
    p.add_argument("--latency-jobs", type=int, default=2000)
    p.add_argument("--rate", type=float, default=500.0, help="jobs/s of the latency and delayed clients")
    p.add_argument("--delayed-jobs", type=int, default=500)
    p.add_argument("--delay", type=float, default=1.0)
    p.add_argument("--http-jobs", type=int, default=20000)
    p.add_argument("--http-connections", type=int, default=64)
    p.add_argument("--wrk-seconds", type=float, default=5.0)
    p.add_argument("--no-wrk", action="store_true", help="skip wrk even if it is installed")
    p.add_argument("--systems", default=",".join(s.key for s in SYSTEMS), help="comma-separated subset")
    p.add_argument("--scenarios", help=f"comma-separated subset of {','.join(SCENARIOS)} (default: all; with --quick "
                                       f"all but {','.join(NOT_IN_QUICK)})")
    p.add_argument("--wq-python", help="a python that already has workqueue installed (default: bench/.venvs/workqueue)")
    p.add_argument("--setup-only", action="store_true", help="create the environments and stop")
    p.add_argument("--out", default=str(BENCH), help="where RESULTS.md, results.json and results.png go")
    p.add_argument("--report-from", metavar="RESULTS_JSON",
                   help="only write RESULTS.md and results.png again from a saved results.json")
    args = p.parse_args(argv)
    if args.report_from:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        report_python = venv_python("report")
        publish(json.loads(Path(args.report_from).read_text()), out_dir, report_python if report_python.exists() else None)
        return 0
    if args.quick:
        args.rounds = 1 if args.rounds == 3 else args.rounds
        args.jobs = 2000 if args.jobs == 20000 else args.jobs
        args.latency_jobs, args.delayed_jobs, args.http_jobs, args.wrk_seconds = 250, 100, 2000, 1.0
    keys = [k.strip() for k in args.systems.split(",") if k.strip()]
    unknown = [k for k in keys if k not in {s.key for s in SYSTEMS}]
    default_scenarios = [s for s in SCENARIOS if not (args.quick and s in NOT_IN_QUICK)]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()] if args.scenarios else default_scenarios
    if unknown or any(s not in SCENARIOS for s in scenarios):
        p.error(f"unknown system or scenario: {unknown or scenarios}")
    if "scale" in scenarios and "workqueue" in keys and shutil.which("redis-cli") is None:
        if args.scenarios:
            p.error("the scale scenario needs redis-cli (to create its Redis Cluster) on the PATH")
        scenarios.remove("scale")
        log("redis-cli is not installed: the scale scenario (Redis Cluster) is left out")
    systems = [s for s in SYSTEMS if s.key in keys]
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk
    cfg = Config(args.jobs, args.rounds, args.concurrency, args.sleep_jobs, args.latency_jobs, args.rate,
                 args.delayed_jobs, args.delay, args.http_jobs, args.http_connections, args.wrk_seconds, use_wrk)
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    started = dt.datetime.now(dt.UTC)
    t0 = time.monotonic()
    WORK.mkdir(parents=True, exist_ok=True)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    bench = None
    try:
        env_names = sorted({s.env for s in systems} | {"workqueue", "report"})
        envs = setup_envs(env_names, args.wq_python)
        if args.setup_only:
            return 0
        info = machine()
        bench = Bench(cfg, envs, systems, scenarios)
        bench.start_redis()
        if not use_wrk:
            log("wrk is not installed: HTTP single POST measured with the aiohttp load generator only")
        bench.run()
    except BenchError as e:
        log(f"BENCHMARK ABORTED: {e}")
        if bench is not None:
            (WORK / "partial-results.json").write_text(json.dumps(bench.results, indent=1))
            log(f"partial results in {WORK / 'partial-results.json'}")
        return 1
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        stop_all()
    flatten_calls(bench.results)
    info["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    saved = {
        "date": started.isoformat(timespec="seconds"), "command": command, "machine": info,
        "config": cfg.__dict__, "versions": {k: {n: e.packages.get(n) for n in PACKAGES.get(k, [])} for k, e in envs.items()},
        "seconds": time.monotonic() - t0, "measurements": bench.runs, "checks": bench.verified,
        "runs": {sc: {k: [{m: v for m, v in run.items() if m != "redis_calls"} for run in runs]
                      for k, runs in by.items()} for sc, by in bench.results.items()},
    }
    publish(saved, out_dir, envs["report"].python)
    return 0


def publish(saved: dict[str, Any], out_dir: Path, plot_python: Path | None) -> None:
    """Write results.json, RESULTS.md and results.png from one run's saved data."""
    agg = aggregate(saved["runs"])
    saved = {**saved, "labels": {s.key: s.label for s in SYSTEMS}, "fill_notes": {s.key: s.fill_note for s in SYSTEMS},
             "summary": agg, "enqueue": enqueue_summary(agg)}
    (out_dir / "results.json").write_text(json.dumps(saved, indent=1))
    envs = {name: Env(name, Path(), dict(versions)) for name, versions in saved["versions"].items()}
    text = write_report(out_dir / "RESULTS.md", agg, Config(**saved["config"]), envs, saved["machine"],
                        dt.datetime.fromisoformat(saved["date"]), saved["seconds"], saved["command"],
                        saved["measurements"], saved["checks"], saved["runs"])
    if plot_python is not None:
        plot = subprocess.run([str(plot_python), str(BENCH / "plot.py"), str(out_dir / "results.json"),
                               str(out_dir / "results.png")], capture_output=True, text=True)
        if plot.returncode != 0:
            log(f"the chart failed:\n{plot.stderr[-2000:]}")
    print(text)
    log(f"written: {out_dir / 'RESULTS.md'}, {out_dir / 'results.json'}" + (f", {out_dir / 'results.png'}" if plot_python else "")
        + f" ({saved['seconds'] / 60:.1f} min of benchmark)")


if __name__ == "__main__":
    sys.exit(main())
