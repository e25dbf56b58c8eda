"""`python -m workqueue <command>` as a subprocess against a real service: output for people and
for programs (--json), exit status 0, 1 and 2, `enqueue --file`, `dead retry --all`, --help."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Service, free_port
from tests.support import service_metrics
from workqueue import Client
from workqueue.__main__ import COMMANDS
from workqueue.client import cli


def run(*args: str, env: dict[str, str] | None = None, stdin: str | None = None,
        timeout: float = 30) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WORKQUEUE_")}
    environment.update(env or {})
    return subprocess.run([sys.executable, "-m", "workqueue", *args], capture_output=True, text=True, env=environment,
                          input=stdin, timeout=timeout)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The stderr of a command that failed: one line, no traceback."""
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_enqueue_wait_prints_the_result(service: Service) -> None:
    result = run("enqueue", "echo", '{"a": 1}', "--wait", "--url", service.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"a": 1}
    # Printed as it is: neither read as rich markup nor wrapped.
    text = "[bold]kept[/bold] " + "x" * 300
    result = run("enqueue", "echo", json.dumps({"s": text}), "--wait", "5", "--url", service.url)
    assert json.loads(result.stdout) == {"s": text}


def test_enqueue_prints_the_id_and_json_output_parses(service: Service) -> None:
    plain = run("enqueue", "echo", '{"a": 1}', "--queue", "other", "--priority", "4", "--url", service.url)
    assert plain.returncode == 0, plain.stderr
    job_id = plain.stdout.split()[0]
    with Client(service.url) as client:
        job = client.get(job_id)
    assert (job.queue, job.priority, job.payload) == ("other", 4, {"a": 1})

    accepted = as_json(run("enqueue", "echo", "--json", "--delay", "60", "--key", "k1", "--url", service.url))
    assert (accepted["status"], accepted["type"]) == ("scheduled", "echo")
    again = as_json(run("enqueue", "echo", "--key", "k1", "--delay", "60", "--url", service.url, "--json"))
    assert again["id"] == accepted["id"] and again["duplicate"] is True
    shown = as_json(run("job", accepted["id"], "--json", "--url", service.url))
    assert (shown["id"], shown["status"], shown["payload"]) == (accepted["id"], "scheduled", {})


def test_url_comes_from_the_environment(service: Service) -> None:
    result = run("stats", "--json", env={"WORKQUEUE_URL": service.url})
    assert as_json(result)["jobs_done"] == 0


def test_a_job_that_did_not_succeed_fails_the_wait(service: Service) -> None:
    result = run("enqueue", "fail", '{"message": "boom [red]x[/red]"}', "--retries", "0", "--wait", "10",
                 "--url", service.url)
    assert one_line_error(result).endswith("ended dead: RuntimeError: boom [red]x[/red]")
    job_id = one_line_error(result).split()[2]
    shown = run("job", job_id, "--url", service.url)
    assert shown.returncode == 0
    assert "boom [red]x[/red]" in shown.stdout  # job text shown as text, never as markup


def test_exit_status_1_when_the_service_refuses_or_cannot_be_reached(service: Service) -> None:
    refused = run("enqueue", "no_such_type", "{}", "--url", service.url)
    assert one_line_error(refused).startswith("workqueue: 422: type: unknown task type 'no_such_type'")
    missing = run("job", "0" * 32, "--url", service.url)
    assert one_line_error(missing).startswith("workqueue: 404: id:")
    nobody = run("stats", "--url", f"http://127.0.0.1:{free_port()}")
    assert "cannot connect" in one_line_error(nobody)


def test_exit_status_2_for_a_usage_error(service: Service) -> None:
    bad_json = run("enqueue", "echo", "{not json", "--url", service.url)
    assert bad_json.returncode == 2 and "PAYLOAD_JSON: not valid JSON" in bad_json.stderr
    url = ["--url", service.url]
    for args in (["jobs", "--limit", "0", *url], ["dead", "retry", *url], ["dead", "retry", "x", "--all", *url],
                 ["cancel", *url], ["enqueue", "echo", "--wait", "soon", *url], ["enqueue", *url],
                 ["enqueue", "echo", "--file", "x.jsonl", *url], ["stats", "--url", "localhost:8080"],
                 ["pause", *url], ["dead", "nonsense", *url]):
        result = run(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "usage:" in result.stderr and "Traceback" not in result.stderr
    assert service_metrics(service)["jobs_enqueued"] == 0


def test_cancel_several_and_report_the_refused(service: Service) -> None:
    with Client(service.url) as client:
        ids = [client.enqueue("echo", {}, delay=60).id for _ in range(2)]
    both = as_json(run("cancel", *ids, "--json", "--url", service.url))
    assert [(c["id"], c["status"], c["previous_status"]) for c in both] == [(i, "cancelled", "scheduled") for i in ids]
    again = one_line_error(run("cancel", ids[0], "--url", service.url))
    assert again.startswith(f"workqueue: {ids[0]}: 409: id: job {ids[0]} has already ended")
    several = run("cancel", ids[0], ids[1], "--url", service.url)
    assert several.returncode == 1 and len(several.stderr.splitlines()) == 2  # a line per refused id
    assert "(2 of 2 refused)" in several.stderr


def test_dead_list_retry_all_and_delete(service: Service) -> None:
    with Client(service.url) as client:
        ids = [client.enqueue("fail", {}, retries=0).id for _ in range(3)]
        for job_id in ids:
            client.wait(job_id, timeout=10)
    listed = as_json(run("dead", "--json", "--url", service.url))
    assert sorted(j["id"] for j in listed["jobs"]) == sorted(ids) and listed["next_cursor"] is None
    table = run("dead", "--url", service.url)
    assert all(job_id in table.stdout for job_id in ids)

    redriven = as_json(run("dead", "retry", "--all", "--type", "fail", "--json", "--url", service.url))
    assert redriven["redriven"] == 3 and sorted(redriven["ids"]) == sorted(ids)
    assert service_metrics(service)["queues"]["default"]["redriven"] == 3
    with Client(service.url) as client:
        for job_id in ids:
            client.wait(job_id, timeout=10)  # they fail again
    one = as_json(run("dead", "retry", ids[0], "--json", "--url", service.url))
    assert one == {"redriven": 1, "ids": [ids[0]]}
    deleted = as_json(run("dead", "delete", ids[1], ids[2], "--json", "--url", service.url))
    assert deleted == {"deleted": [ids[1], ids[2]]}
    nothing = run("dead", "retry", "--all", "--queue", "elsewhere", "--url", service.url)
    assert nothing.returncode == 0 and "re-drove 0 dead jobs" in nothing.stdout


def test_enqueue_file_sends_batches(service: Service, tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    lines = [json.dumps({"type": "echo", "payload": {"n": n}}) for n in range(1200)]
    path.write_text("\n".join(lines[:600] + [""] + lines[600:]) + "\n")  # a blank line is skipped
    result = run("enqueue", "--file", str(path), "--queue", "bulk", "--json", "--url", service.url)
    accepted = as_json(result)
    assert len(accepted) == 1200 and {a["queue"] for a in accepted} == {"bulk"}
    assert "1200/1200" in result.stderr  # the progress bar
    assert service_metrics(service)["queues"]["bulk"]["enqueued"] == 1200
    from_stdin = run("enqueue", "--file", "-", "--url", service.url, stdin=lines[0] + "\n")
    assert from_stdin.returncode == 0 and "enqueued 1 jobs" in from_stdin.stdout


def test_a_bad_line_in_the_file_is_a_usage_error_naming_it(service: Service, tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"type": "echo", "payload": {}}\n{"type": "echo", "payload": {}}\n{"type": "echo",\n')
    result = run("enqueue", "--file", str(path), "--url", service.url)
    assert result.returncode == 2 and "line 3: not valid JSON" in result.stderr
    path.write_text('{"type": "echo", "payload": {}}\n[1, 2]\n')
    result = run("enqueue", "--file", str(path), "--url", service.url)
    assert result.returncode == 2 and "line 2: expected a JSON object" in result.stderr
    assert service_metrics(service)["jobs_enqueued"] == 0


def test_a_job_the_service_refuses_names_its_line(service: Service, tmp_path: Path) -> None:
    path = tmp_path / "jobs.jsonl"
    good = json.dumps({"type": "echo", "payload": {}})
    path.write_text("\n".join([good] * 501 + [json.dumps({"type": "echo", "payload": 3})]) + "\n")
    result = run("enqueue", "--file", str(path), "--url", service.url)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.splitlines()[-1]  # after the progress bar
    assert "422: line 502: payload" in line and "the 500 jobs before line 501 were enqueued" in line
    assert service_metrics(service)["jobs_enqueued"] == 500


def test_workers_and_stats(service: Service) -> None:
    workers = as_json(run("workers", "--json", "--url", service.url))
    assert workers["count"] == 1 and workers["workers"][0]["pid"] == service.process.pid
    assert str(service.process.pid) in run("workers", "--url", service.url).stdout
    run("enqueue", "echo", "--wait", "--url", service.url)
    assert as_json(run("stats", "--json", "--url", service.url))["jobs_done"] == 1
    table = run("stats", "--url", service.url)
    assert table.returncode == 0 and "default" in table.stdout and "done" in table.stdout


def test_stats_watch_refreshes_until_interrupted(service: Service) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WORKQUEUE_")}
    process = subprocess.Popen([sys.executable, "-m", "workqueue", "stats", "--watch", "0.2", "--json",
                                "--url", service.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=environment)
    time.sleep(2.0)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=10)
    assert process.returncode == 0, err
    documents = [json.loads(line) for line in out.splitlines()]
    assert len(documents) >= 3 and all("jobs_done" in d for d in documents)


def test_the_token_comes_from_the_environment(start_service: Any) -> None:
    service = start_service(api_token="s3cret")
    assert as_json(run("stats", "--json", "--url", service.url, env={"WORKQUEUE_API_TOKEN": "s3cret"}))
    assert "401" in one_line_error(run("stats", "--url", service.url))


@pytest.mark.route("GET", "/jobs")
def test_jobs_lists_dead_jobs(service: Service) -> None:
    with Client(service.url) as client:
        ids = [client.enqueue("fail", {}, retries=0).id for _ in range(2)]
        for job_id in ids:
            client.wait(job_id, timeout=10)
    listed = as_json(run("jobs", "--status", "dead", "--json", "--url", service.url))
    assert sorted(j["id"] for j in listed["jobs"]) == sorted(ids)
    table = run("jobs", "--status", "dead", "--url", service.url)
    assert all(job_id in table.stdout for job_id in ids)


@pytest.mark.route("GET", "/queues")
def test_queues_table_and_json(service: Service) -> None:
    run("enqueue", "echo", "--queue", "reports", "--delay", "60", "--url", service.url)
    queues = as_json(run("queues", "--json", "--url", service.url))["queues"]
    assert {q["name"]: q["scheduled"] for q in queues}["reports"] == 1
    assert "reports" in run("queues", "--url", service.url).stdout


@pytest.mark.route("POST", "/queues/default/pause")
def test_pause_and_resume(service: Service) -> None:
    assert as_json(run("pause", "default", "--json", "--url", service.url)) == {"name": "default", "paused": True}
    assert run("resume", "default", "--url", service.url).stdout.strip() == "default resumed"


def test_every_command_has_help() -> None:
    for command in [[c] for c in sorted(COMMANDS)] + [["dead", "retry"], ["dead", "delete"]]:
        with pytest.raises(SystemExit) as done:
            cli.main([*command, "--help"])
        assert done.value.code == 0, command


def test_the_dispatcher_and_the_cli_know_the_same_commands() -> None:
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if a.dest == "command"]
    assert set(commands.choices or ()) == COMMANDS
    service_help = run("--help")
    assert service_help.returncode == 0 and "--role" in service_help.stdout
    assert all(command in service_help.stdout for command in COMMANDS)


def test_serve_and_no_command_run_the_service() -> None:
    for args in (["serve", "--help"], ["--help"]):
        result = run(*args)
        assert result.returncode == 0 and "--role" in result.stdout and "--concurrency" in result.stdout
    bad = run("serve", "--role", "nobody")
    assert bad.returncode == 2 and "--role" in bad.stderr
