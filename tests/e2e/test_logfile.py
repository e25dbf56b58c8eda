"""The log file of real service processes (issue 17): SIGHUP reopens it for logrotate, a full disk
(a small tmpfs, when the tests run as root) neither stops nor slows the service, and over a 100,000-job
run logs.txt stays under its limit while its backups rotate.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import Service, read_log, wait_for
from tests.support import http, service_metrics, write_config
from tests.test_metrics import samples_of, value


def scrape_dropped(service: Service) -> float:
    import urllib.request

    request = urllib.request.Request(f"{service.url}/metrics", headers={"Accept": "text/plain"})
    with urllib.request.urlopen(request, timeout=5) as r:
        found = value(samples_of(r.read().decode()), "workqueue_log_lines_dropped_total")
    assert found is not None
    return found


def enqueue(service: Service, jobs: list[dict[str, Any]]) -> list[str]:
    status, body = http("POST", f"{service.url}/enqueue", jobs)
    assert status == 202, body
    return [a["id"] for a in body]


def all_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of the log files at `path` (rotated ones first); each must be whole JSON."""
    files = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]) if p.suffix[1:].isdigit()
                   else 0)
    out = []
    for f in [*files, path]:
        data = f.read_bytes()
        assert not data or data.endswith(b"\n"), f.name
        out += [orjson.loads(line) for line in data.splitlines()]
    return out


def test_sighup_after_a_rename_makes_the_process_write_a_new_logs_txt_and_sigterm_still_stops_it(
    services: Any, redis_url: str, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "cfg", redis_url)
    service = services("svc", "--role", "both", "--config", str(config)).wait_ready()
    (first,) = enqueue(service, [{"type": "echo", "payload": {}}])
    wait_for(lambda: any(r.get("job_id") == first and r["event"] == "succeeded" for r in read_log(service.log_path)),
             10, "the first job's line")

    moved = service.log_path.with_name("logs.txt.1")
    service.log_path.rename(moved)  # what logrotate does first
    service.signal(signal.SIGHUP)
    wait_for(service.log_path.exists, 5, "the process to open a new logs.txt")
    (second,) = enqueue(service, [{"type": "echo", "payload": {}}])
    wait_for(lambda: any(r.get("job_id") == second and r["event"] == "succeeded" for r in read_log(service.log_path)),
             10, "the second job's line in the new logs.txt")
    assert service.process.poll() is None  # SIGHUP did not end it

    service.signal(signal.SIGTERM)
    assert service.wait(15) == 0
    old, new = read_log(moved), read_log(service.log_path)
    assert old[0]["event"] == "plugin_loaded" and any(r.get("job_id") == first for r in old)
    assert not any(r.get("job_id") == second for r in old)
    assert new[-1]["event"] == "service_stopped"
    # Every line once, across the two files.
    keys = [orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in old + new]
    assert len(keys) == len(set(keys))


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs of this test's own (root only); unmounted at the end."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        # Lazy: a process the test could not stop still holds a file there; it goes when that ends.
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_neither_stops_nor_slows_the_service_and_writing_resumes_when_space_returns(
    services: Any, redis_url: str, tmp_path: Path, small_disk: Path
) -> None:
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * 48 * 1024)  # leaves 16 KiB for logs.txt: a few dozen lines
    config = write_config(tmp_path / "cfg", redis_url, log_path=str(small_disk / "logs.txt"))
    service = services("svc", "--role", "both", "--config", str(config))
    service.log_path = small_disk / "logs.txt"
    service.wait_ready()
    try:
        done = 0
        dropped: list[float] = []
        began = time.monotonic()
        for _ in range(5):  # several waves over a few seconds, the disk full all along
            enqueue(service, [{"type": "echo", "payload": {"n": i}} for i in range(200)])
            done += 200
            wait_for(lambda n=done: service_metrics(service)["jobs_done"] == n, 20, f"{done} jobs to succeed")
            dropped.append(scrape_dropped(service))
            time.sleep(0.3)
        assert time.monotonic() - began < 20
        assert dropped[0] > 0 and all(b > a for a, b in zip(dropped, dropped[1:])), dropped
        stderr = service.read_stderr()
        assert stderr.count("cannot write") == 1, stderr  # at most once a minute
        assert "No space left on device" in stderr
        size_full = (small_disk / "logs.txt").stat().st_size
        assert all(line for line in (small_disk / "logs.txt").read_bytes().split(b"\n")[:-1])

        filler.unlink()  # space returns
        (job,) = enqueue(service, [{"type": "echo", "payload": {"after": True}}])
        wait_for(lambda: any(r.get("job_id") == job and r["event"] == "succeeded"
                             for r in read_log(small_disk / "logs.txt")), 10, "the log to take lines again")
        records = read_log(small_disk / "logs.txt")  # every line whole JSON: none was written in part
        resumed = [r for r in records if r["event"] == "log_lines_dropped"]
        assert len(resumed) == 1 and resumed[0]["dropped"] >= dropped[-1], resumed
        assert (small_disk / "logs.txt").stat().st_size > size_full
        assert scrape_dropped(service) == resumed[0]["dropped"]  # nothing dropped since
        service.signal(signal.SIGTERM)
        assert service.wait(15) == 0
    finally:
        service.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_over_100k_jobs_logs_txt_stays_under_its_limit_and_its_backups_rotate(
    services: Any, redis_url: str, tmp_path: Path, figures: Any
) -> None:
    limit, backups, jobs = 2 * 1024 * 1024, 3, 100_000
    config = write_config(tmp_path / "cfg", redis_url, log_max_bytes=limit, log_backups=backups, concurrency=100)
    service = services("svc", "--role", "both", "--config", str(config)).wait_ready()
    largest = [0]
    stop = threading.Event()

    def watch() -> None:  # the largest logs.txt seen while the run goes on
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                largest[0] = max(largest[0], service.log_path.stat().st_size)
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    began = time.monotonic()
    try:
        for start in range(0, jobs, 1000):
            enqueue(service, [{"type": "echo", "payload": {"n": n}} for n in range(start, start + 1000)])
        wait_for(lambda: service_metrics(service)["jobs_done"] == jobs, 300, f"{jobs} jobs to succeed", interval=0.5)
        service.signal(signal.SIGTERM)
        assert service.wait(30) == 0
    finally:
        stop.set()
        watcher.join()
    elapsed = time.monotonic() - began
    files = sorted(p.name for p in service.log_path.parent.glob("logs.txt*"))
    assert files == ["logs.txt", *(f"logs.txt.{n}" for n in range(1, backups + 1))], files
    sizes = {name: (service.log_path.parent / name).stat().st_size for name in files}
    assert largest[0] <= limit and all(size <= limit for size in sizes.values()), (largest, sizes)
    records = all_lines(service.log_path)  # whole JSON lines, the newest ones, in order
    assert records[-1]["event"] == "service_stopped"
    stamps = [r["ts"] for r in records]
    assert stamps == sorted(stamps)
    figures(jobs=jobs, seconds=round(elapsed, 1), log_max_bytes=limit, largest_logs_txt=largest[0],
            files=sizes, lines_kept=len(records))
