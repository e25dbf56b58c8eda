"""The command line client: `python -m workqueue <command>` (DESIGN section 13), on `Client`.

Tables for people, `--json` for programs (one JSON document on stdout). Exit status: 0 on success,
1 when the service refused or failed (its message on stderr, one line), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import APIError, ServiceUnreachable
from . import tables
from .client import Client
from .operations import DEFAULT_URL
from .results import Job

T = TypeVar("T")
BATCH = 500  # jobs per request for `enqueue --file` and `dead retry --all`, half the service's max_batch
WAIT_DEFAULT = 30.0  # `--wait` given without seconds


class Failed(Exception):
    """A command that did what it could but must end with exit status 1 (its message is printed)."""


class Output:
    """Where a command's answer goes: a table on stdout for people, or JSON for programs."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.console = Console(highlight=False)
        if not self.console.is_terminal and "COLUMNS" not in os.environ:
            # Into a file or a pipe rich would assume 80 columns and fold every table; ids and
            # errors stay on one line this way.
            self.console.width = 200
        self.errors = Console(stderr=True, highlight=False)

    def show(self, document: Any, view: Callable[[], Any]) -> None:
        """`document` as JSON with --json, else what `view()` renders: a table, or plain text (a
        job's result, say), which is printed as it is, neither wrapped nor read as rich markup."""
        if self.as_json:
            print(json.dumps(document, ensure_ascii=False))
            return
        shown = view()
        if isinstance(shown, str):
            print(shown)
        else:
            self.console.print(shown)

    def say(self, document: Any, line: str) -> None:
        self.show(document, lambda: line)

    def progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=self.errors, transient=False)


# -- the commands --------------------------------------------------------------------------------


def enqueue(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.file is not None:
        enqueue_file(client, args, out)
        return
    if args.type is None:
        args.parser.error("give the TYPE of the job (and its PAYLOAD_JSON), or --file")
    payload = parse_json(args.payload, "PAYLOAD_JSON", args.parser)
    done = client.enqueue(args.type, payload, queue=args.queue, delay=args.delay, key=args.key, retries=args.retries,
                          priority=args.priority)
    if args.wait is None:
        note = " (a duplicate: the key names this existing job)" if done.duplicate else ""
        out.say(done.raw, f"{done.id} {done.status} ({done.type} on queue {done.queue}){note}")
        return
    job = client.wait(done.id, args.wait)
    out.show(job.raw, lambda: json.dumps(job.result, ensure_ascii=False, indent=2))
    check_succeeded(job)


def enqueue_file(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.type is not None or args.payload is not None or args.key is not None or args.wait is not None:
        args.parser.error("--file: give the jobs in the file, without TYPE, PAYLOAD_JSON, --key or --wait")
    defaults = {"queue": args.queue, "delay": args.delay, "retries": args.retries, "priority": args.priority}
    jobs = list(read_jobs(args.file, args.parser, {k: v for k, v in defaults.items() if v is not None}))
    accepted: list[dict[str, Any]] = []
    with out.progress() as bar:
        task = bar.add_task("enqueueing", total=len(jobs))
        for start in range(0, len(jobs), BATCH):
            lines = [number for number, _ in jobs[start: start + BATCH]]
            batch = [job for _, job in jobs[start: start + BATCH]]
            try:
                accepted += [e.raw for e in client.enqueue_many(batch)]
            except APIError as e:
                sent = (f"the {len(accepted)} jobs before line {lines[0]} were enqueued, none from it on"
                        if accepted else "nothing was enqueued")
                raise APIError(e.status, f"{at_line(e.message, lines)} ({sent})") from e
            bar.advance(task, len(batch))
    out.say(accepted, f"enqueued {len(accepted)} jobs from {args.file}")


def read_jobs(path: str, parser: argparse.ArgumentParser,
              defaults: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, job object) of a JSON-lines file, every line checked before anything is sent."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        parser.error(f"--file {path}: cannot read it ({e})")
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        job = parse_json(line, f"--file {path}: line {number}", parser)
        if not isinstance(job, dict):
            parser.error(f"--file {path}: line {number}: expected a JSON object (one job), got {type(job).__name__}")
        given = {name.lower() for name in job}
        yield number, {**{k: v for k, v in defaults.items() if k not in given}, **job}


def at_line(message: str, lines: Sequence[int]) -> str:
    """The service names a job of an array by its index (`[2].payload: ...`): name its line instead."""
    found = re.match(r"\[(\d+)\]\.?(.*)", message)
    if found and int(found.group(1)) < len(lines):
        return f"line {lines[int(found.group(1))]}: {found.group(2)}"
    return message


def show_job(client: Client, args: argparse.Namespace, out: Output) -> None:
    job = client.wait(args.id, args.wait) if args.wait is not None else client.get(args.id)
    out.show(job.raw, lambda: tables.job_detail(job))
    if args.wait is not None:
        check_succeeded(job)


def list_jobs(client: Client, args: argparse.Namespace, out: Output) -> None:
    page = client.jobs(queue=args.queue, status=args.status, type=args.type, limit=args.limit, cursor=args.cursor)
    out.show({"jobs": [j.raw for j in page], "next_cursor": page.next_cursor},
             lambda: with_cursor(tables.job_list(page, f"{args.queue}: {args.status}"), page.next_cursor))


def cancel(client: Client, args: argparse.Namespace, out: Output) -> None:
    done, refused = each(args.ids, client.cancel)
    out.show([{"id": c.id, "status": c.status, "previous_status": c.previous_status} for c in done],
             lambda: "\n".join(f"{c.id} cancelled (was {c.previous_status})" for c in done))
    fail_if(refused, len(args.ids))


def dead(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.action == "retry":
        redrive(client, args, out)
    elif args.action == "delete":
        def delete(job_id: str) -> str:
            client.delete_dead(job_id)
            return job_id

        deleted, refused = each(args.ids, delete)
        out.show({"deleted": deleted}, lambda: "\n".join(f"{i} deleted" for i in deleted))
        fail_if(refused, len(args.ids))
    else:
        page = client.dead(queue=args.queue, type=args.type, limit=args.limit, cursor=args.cursor)
        out.show({"jobs": [j.raw for j in page], "next_cursor": page.next_cursor},
                 lambda: with_cursor(tables.job_list(page, "dead", dead=True), page.next_cursor))


def redrive(client: Client, args: argparse.Namespace, out: Output) -> None:
    if bool(args.ids) == bool(args.all):
        args.parser.error("give the ids of dead jobs to re-drive, or --all (with --queue, --type), not both")
    refused: list[str] = []
    if args.ids:
        if args.queue or args.type:
            args.parser.error("--queue and --type go with --all")
        done, refused = each(args.ids, client.retry_dead)
        moved = [job_id for ids in done for job_id in ids]
    else:
        moved = redrive_all(client, args.queue, args.type, out)
    out.show({"redriven": len(moved), "ids": moved}, lambda: f"re-drove {len(moved)} dead jobs")
    fail_if(refused, len(args.ids))


def redrive_all(client: Client, queue: str | None, type: str | None, out: Output) -> list[str]:
    """Every dead job matching, in batches. A job that dies again while this runs is re-driven once:
    the loop stops at the first batch that brings back one it already moved, so failing jobs cannot
    keep it going for ever."""
    total = None
    if type is None:  # /metrics counts dead jobs per queue, not per type
        counts = client.metrics().get("queues") or {}
        total = sum(int(row.get("dead", 0)) for name, row in counts.items() if queue in (None, name))
    moved: list[str] = []
    seen: set[str] = set()
    with out.progress() as bar:
        task = bar.add_task("re-driving", total=total)
        while True:
            ids = client.retry_dead(queue=queue, type=type, limit=BATCH)
            fresh = [i for i in ids if i not in seen]
            seen.update(fresh)
            moved += fresh
            if total is not None and len(moved) > total:  # jobs that died meanwhile
                bar.update(task, total=len(moved))
            bar.advance(task, len(fresh))
            if len(ids) < BATCH or len(fresh) < len(ids):
                break
        bar.update(task, total=len(moved), completed=len(moved))
    return moved


def queues(client: Client, args: argparse.Namespace, out: Output) -> None:
    found = client.queues()
    out.show({"queues": [q.raw for q in found]}, lambda: tables.queue_list(found))


def pause(client: Client, args: argparse.Namespace, out: Output) -> None:
    paused = args.command == "pause"
    (client.pause if paused else client.resume)(args.queue)
    out.say({"name": args.queue, "paused": paused}, f"{args.queue} {'paused' if paused else 'resumed'}")


def workers(client: Client, args: argparse.Namespace, out: Output) -> None:
    found = client.workers()
    out.show({"workers": [w.raw for w in found], "count": len(found)}, lambda: tables.worker_list(found))


def stats(client: Client, args: argparse.Namespace, out: Output) -> None:
    if args.watch is None:
        metrics = client.metrics()
        out.show(metrics, lambda: tables.stats(metrics))
        return
    try:
        if out.as_json:  # one JSON line per refresh
            while True:
                print(json.dumps(client.metrics(), ensure_ascii=False), flush=True)
                time.sleep(args.watch)
        with Live(tables.stats(client.metrics()), console=out.console, auto_refresh=False) as live:
            while True:
                time.sleep(args.watch)
                live.update(tables.stats(client.metrics()), refresh=True)
    except KeyboardInterrupt:
        return  # Ctrl-C is how a watch ends


# -- shared helpers --------------------------------------------------------------------------------


def parse_json(text: str | None, where: str, parser: argparse.ArgumentParser) -> Any:
    if text is None:
        return {}
    try:
        return json.loads(text)
    except ValueError as e:
        parser.error(f"{where}: not valid JSON ({e})")


def check_succeeded(job: Job) -> None:
    if job.status != "succeeded":
        raise Failed(f"job {job.id} ended {job.status}" + (f": {job.error}" if job.error else ""))


def each(ids: Sequence[str], act: Callable[[str], T]) -> tuple[list[T], list[str]]:
    """`act` on every id, going on past refusals: (what it returned, the refusals as lines)."""
    done, refused = [], []
    for job_id in ids:
        try:
            done.append(act(job_id))
        except APIError as e:
            refused.append(f"{job_id}: {e}")
    return done, refused


def fail_if(refused: Sequence[str], tried: int) -> None:
    """One line per refused id on stderr (the last one from main), then exit status 1."""
    if not refused:
        return
    for line in refused[:-1]:
        report(line)
    raise Failed(refused[-1] if tried == 1 else f"{refused[-1]} ({len(refused)} of {tried} refused)")


def with_cursor(grid: Any, cursor: str | None) -> Any:
    if cursor is not None:
        grid.caption = f"more: --cursor {cursor}"
    return grid


def report(message: str) -> None:
    """One line on stderr, as it is (no markup, no wrapping)."""
    print(f"workqueue: {' '.join(message.split())}", file=sys.stderr)


# -- the parser and main ---------------------------------------------------------------------------


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    # Given to every command, after its name. SUPPRESS as default: a subcommand's default would
    # otherwise overwrite what was given to its parent (`dead --json retry --all`).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS,
                        help=f"the service's HTTP API (default $WORKQUEUE_URL, else {DEFAULT_URL}); "
                        "the token comes from $WORKQUEUE_API_TOKEN")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print one JSON document on stdout instead of a table")

    root = argparse.ArgumentParser(prog="python -m workqueue", description="Talk to a running workqueue service.")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, run: Callable[[Client, argparse.Namespace, Output], None], summary: str,
                parent: Any = commands) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, parents=[common], help=summary, description=summary)
        p.set_defaults(run=run, parser=p)
        return p

    p = command("enqueue", enqueue, "enqueue a job (or every job of a JSON-lines file) and print its id")
    p.add_argument("type", nargs="?", metavar="TYPE", help="the task type")
    p.add_argument("payload", nargs="?", metavar="PAYLOAD_JSON", help="the payload, a JSON object (default {})")
    p.add_argument("--queue", help="the queue (default: default)")
    p.add_argument("--delay", type=seconds, metavar="SECONDS", help="start no earlier than this from now")
    p.add_argument("--key", help="idempotency key (default: a new one, kept across retries)")
    p.add_argument("--retries", type=int, metavar="N", help="tries after a failed attempt")
    p.add_argument("--priority", type=int, metavar="P", help="0-9, higher runs first")
    p.add_argument("--wait", type=seconds, nargs="?", const=WAIT_DEFAULT, metavar="SECONDS",
                   help=f"wait for the job to end (default {WAIT_DEFAULT:g} s) and print its result; "
                   "exit status 1 if it did not succeed")
    p.add_argument("--file", metavar="JOBS_JSONL", help="one job object per line ('-': stdin), sent in batches "
                   f"of {BATCH}; --queue, --delay, --retries, --priority fill in jobs that lack them")

    p = command("job", show_job, "show a job")
    p.add_argument("id", metavar="ID")
    p.add_argument("--wait", type=seconds, metavar="SECONDS",
                   help="wait up to SECONDS for it to end; exit status 1 if it did not succeed")

    p = command("jobs", list_jobs, "list a queue's jobs in one status")
    p.add_argument("--queue", default="default", help="(default: default)")
    p.add_argument("--status", default="queued", help="queued, scheduled, active, retrying, succeeded, dead, "
                   "cancelled, ... (default: queued)")
    p.add_argument("--type", help="only jobs of this task type")
    p.add_argument("--limit", type=positive, default=50, metavar="N", help="at most N (default 50)")
    p.add_argument("--cursor", help="the next page, as the previous one ended")

    p = command("cancel", cancel, "cancel jobs that have not ended")
    p.add_argument("ids", nargs="+", metavar="ID")

    p = command("dead", dead, "list dead jobs; `dead retry` and `dead delete` act on them")
    p.add_argument("--queue", help="only this queue's")
    p.add_argument("--type", help="only jobs of this task type")
    p.add_argument("--limit", type=positive, default=50, metavar="N", help="at most N (default 50)")
    p.add_argument("--cursor", help="the next page, as the previous one ended")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    sub = command("retry", dead, "re-drive dead jobs: the ids given, or --all that match --queue and --type",
                  actions)
    sub.add_argument("ids", nargs="*", metavar="ID")
    sub.add_argument("--all", action="store_true", help="every dead job that matches --queue and --type")
    # SUPPRESS: `dead --queue q retry --all` keeps the q given before `retry`.
    sub.add_argument("--queue", default=argparse.SUPPRESS, help="with --all: only this queue's")
    sub.add_argument("--type", default=argparse.SUPPRESS, help="with --all: only jobs of this task type")
    sub = command("delete", dead, "drop dead jobs", actions)
    sub.add_argument("ids", nargs="+", metavar="ID")

    command("queues", queues, "list the queues: paused or not, jobs by status")
    for name, summary in (("pause", "stop workers from starting a queue's jobs"),
                          ("resume", "let workers start a paused queue's jobs again")):
        command(name, pause, summary).add_argument("queue", metavar="QUEUE")
    command("workers", workers, "list the live worker processes")
    p = command("stats", stats, "the counts of every queue (GET /metrics)")
    p.add_argument("--watch", type=seconds, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    return root


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    out = Output(getattr(args, "json", False))
    url = getattr(args, "url", None) or os.environ.get("WORKQUEUE_URL") or DEFAULT_URL
    try:
        client = Client(url, token=os.environ.get("WORKQUEUE_API_TOKEN") or None)
    except ValueError as e:  # a URL that is not http://host:port
        args.parser.error(str(e))
    try:
        with client:
            args.run(client, args, out)
    except APIError as e:
        # aiohttp's own answer for a path it has no route for: say what that probably means.
        missing = e.status in (404, 405) and e.message in ("Not Found", "Method Not Allowed")
        report(f"{e} (this service has no such route: is it older than this client?)" if missing else str(e))
        return 1
    except (ServiceUnreachable, TimeoutError, Failed) as e:
        report(str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
