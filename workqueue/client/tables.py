"""The command line's views for people: rich tables of jobs, queues, workers and metrics.

Every value that comes from a job or the service is given to rich as `Text`, never as markup: a
payload or an error holding `[bold]` or `[/]` is shown as it is, and cannot break the output.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from .results import Job, QueueInfo, Worker, timestamp

STATUS_STYLES = {"succeeded": "green", "dead": "red", "cancelled": "yellow", "expired": "yellow",
                 "active": "cyan", "retrying": "magenta"}


def when(moment: datetime | None) -> Text:
    return Text(moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if moment else "-")


def plain(value: Any) -> Text:
    return Text("-" if value is None else str(value))


def as_json(value: Any) -> Text:
    return Text(json.dumps(value, ensure_ascii=False, sort_keys=True))


def status(value: str) -> Text:
    return Text(value, style=STATUS_STYLES.get(value, ""))


def short(value: str | None, width: int = 60) -> Text:
    if not value:
        return Text("-")
    line = " ".join(value.split())
    return Text(line if len(line) <= width else line[: width - 1] + "…")


def table(*columns: str, title: str | None = None) -> Table:
    grid = Table(*columns, box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)
    # Ids are copied from here into the next command: wrapped, never cut short with an ellipsis.
    grid.columns[0].overflow = "fold"
    return grid


def job_detail(job: Job) -> Table:
    """One job, field by field, with whatever the service added (progress, died_at, ...)."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    rows: list[tuple[str, Text]] = [
        ("id", Text(job.id)), ("type", Text(job.type)), ("queue", Text(job.queue)), ("status", status(job.status)),
        ("attempts", Text(f"{job.attempts} (retries {job.retries})")), ("priority", plain(job.priority)),
        ("enqueued_at", when(job.enqueued_at)), ("run_at", when(job.run_at)),
        ("started_at", when(job.started_at)), ("finished_at", when(job.finished_at)),
        ("payload", as_json(job.payload)), ("result", as_json(job.result)), ("error", plain(job.error)),
    ]
    known = {name for name, _ in rows} | {"retries"}
    rows += [(name, as_json(value)) for name, value in job.raw.items() if name not in known]
    for name, value in rows:
        grid.add_row(name, value)
    return grid


def job_list(jobs: Iterable[Job], title: str, dead: bool = False) -> Table:
    grid = table("id", "type", "queue", "status", "attempts", "died" if dead else "enqueued", "error", title=title)
    for job in jobs:
        moment = timestamp(job.raw.get("died_at")) if dead else job.enqueued_at
        grid.add_row(Text(job.id), Text(job.type), Text(job.queue), status(job.status), plain(job.attempts),
                     when(moment), short(job.error))
    return grid


def queue_list(queues: Iterable[QueueInfo]) -> Table:
    grid = table("queue", "paused", "queued", "scheduled", "active", "blocked", "dead", "limits")
    for q in queues:
        grid.add_row(Text(q.name), Text("paused", style="yellow") if q.paused else Text("no"), plain(q.queued),
                     plain(q.scheduled), plain(q.active), plain(q.blocked), plain(q.dead),
                     as_json(list(q.limits)) if q.limits else Text("-"))
    return grid


def worker_list(workers: Iterable[Worker]) -> Table:
    grid = table("worker", "host", "pid", "queues", "concurrency", "in flight", "started", "last heartbeat")
    for w in workers:
        grid.add_row(Text(w.name), Text(w.host), plain(w.pid), Text(",".join(w.queues)), plain(w.concurrency),
                     plain(w.in_flight), when(w.started_at), when(w.last_heartbeat))
    return grid


COUNTS = ("waiting", "active", "scheduled", "dead", "enqueued", "done", "failed", "retried", "cancelled")


def stats(metrics: Mapping[str, Any]) -> Table:
    """GET /metrics: per queue its counts and the run time percentiles, then the totals."""
    grid = table("queue", *COUNTS, "run p50/p99 ms", title=f"jobs in queues: {metrics.get('total_jobs_in_queue', 0)}, "
                 f"done: {metrics.get('jobs_done', 0)}, failed: {metrics.get('jobs_failed', 0)}")
    for name, row in sorted((metrics.get("queues") or {}).items()):
        run = ((row.get("timings") or {}).get("run_ms")) or {}
        timing = f"{run['p50']:.1f} / {run['p99']:.1f}" if "p50" in run else "-"
        grid.add_row(Text(name), *(plain(row.get(count, 0)) for count in COUNTS), Text(timing))
    return grid
