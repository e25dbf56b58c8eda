"""Hygiene (issue 7, point 10): no pickle or marshal, payloads never executed or imported by name,
no secret in logs.txt, Redis URLs with ACL user and password, and rediss:// (TLS)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import redis

from tests.conftest import ROOT, RedisServer, fixture_tasks, free_port, read_log, start_redis, stop_redis, wait_for
from tests.support import write_config

SOURCES = [ROOT / "workqueue", ROOT / "plugins"]
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "jsonpickle", "marshal", "shelve", "copyreg"}
# Where code may be imported by name: plugin discovery, from entry points in installed metadata or
# a plugin's pyproject.toml (configuration the operator controls), never from a request.
IMPORTS_BY_NAME_ALLOWED = {ROOT / "workqueue" / "plugins.py"}


def python_files() -> list[Path]:
    files = [p for d in SOURCES for p in d.rglob("*.py") if "__pycache__" not in p.parts]
    assert len(files) > 10, files
    return files


def test_no_pickle_or_marshal_anywhere_in_the_package_or_plugins() -> None:
    found = []
    for path in python_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value] if node.value in UNSAFE_MODULES else []  # __import__("pickle") and the like
            elif isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, ast.Attribute):
                names = [node.attr]
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n in UNSAFE_MODULES]
    assert not found, found
    # And a plain grep, in case something hides from the parser (e.g. in a string run elsewhere).
    for path in python_files():
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            assert "import pickle" not in code and "import marshal" not in code, f"{path}:{lineno}"


def test_no_eval_exec_or_imports_by_name_outside_plugin_discovery() -> None:
    found = []
    for path in python_files():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            runs_code = isinstance(func, ast.Name) and name in ("eval", "exec", "compile", "__import__", "breakpoint")
            imports_by_name = name in ("import_module", "spec_from_file_location", "module_from_spec", "find_spec")
            if runs_code or (imports_by_name and path not in IMPORTS_BY_NAME_ALLOWED):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}()")
    assert not found, found


async def test_payload_values_and_type_names_are_never_imported_or_run(
    make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    """A task type is a key into the loaded plugins, never a module path; payloads are only data."""
    canary = tmp_path / "canary"
    client = await make_client(make_settings(redis_url=redis_url, role="producer"), fixture_tasks())
    for task_type in ("os:system", "wq_testtasks:crash", "wq_testtasks.crash", "builtins:eval", "__import__",
                      "subprocess.run", "../../etc/passwd", "crash ", "CRASH"):
        r = await client.post("/enqueue", json={"type": task_type, "payload": {}})
        assert r.status == 422, (task_type, r.status)
    r = await client.post("/enqueue", json={"type": "echo", "payload": {
        "__class__": "os.system", "__reduce__": ["os.system", [f"touch {canary}"]],
        "py/object": "os.system", "!!python/object/apply:os.system": [f"touch {canary}"],
        "code": f"__import__('os').system('touch {canary}')"}})
    assert r.status == 202
    assert not canary.exists()


# -- secrets in logs, ACL users, TLS ------------------------------------------------------------

TOKEN = "tok-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
DEFAULT_PASSWORD = "defaultPw-Zq81!x"
ACL_USER, ACL_PASSWORD = "wq_app", "aclPw-Yx27#k"


@pytest.fixture
def protected_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """Our own redis-server with a password for the default user and an ACL user of our own."""
    server = start_redis(tmp_path / "redis-auth")
    with server.client() as c:
        c.acl_setuser(ACL_USER, enabled=True, passwords=[f"+{ACL_PASSWORD}"], keys=["*"], channels=["*"],
                      commands=["+@all"])
        c.config_set("requirepass", DEFAULT_PASSWORD)
    yield server
    stop_redis(server)


def secrets_in(path: Path, secrets: list[str]) -> list[str]:
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    return [s for s in secrets if s in text]


@pytest.mark.timeout(90)
def test_acl_user_url_round_trip_and_no_secret_in_the_logs(
    services: Any, protected_redis: RedisServer, tmp_path: Path
) -> None:
    port = protected_redis.port
    acl_url = f"redis://{ACL_USER}:{quote(ACL_PASSWORD, safe='')}@127.0.0.1:{port}/0"
    default_url = f"redis://:{quote(DEFAULT_PASSWORD, safe='')}@127.0.0.1:{port}/0"
    query_url = f"redis://127.0.0.1:{port}/0?password={quote(DEFAULT_PASSWORD, safe='')}"
    book = tmp_path / "ledger.txt"
    main = services("main", "--role", "both", "--config",
                    str(write_config(tmp_path / "cfg-acl", acl_url, lease=1.0, api_token=TOKEN)))
    others = [services(f"producer-{i}", "--role", "producer", "--config", str(write_config(tmp_path / f"cfg-{i}", url)),
                       env={"WORKQUEUE_API_TOKEN": TOKEN})
              for i, url in enumerate((default_url, query_url))]
    for s in (main, *others):
        s.wait_ready()

    def call(service: Any, method: str, path: str, body: Any = None, token: str | None = TOKEN) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(service.url + path, data=orjson.dumps(body) if body is not None else None,
                                     method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, orjson.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, orjson.loads(e.read())

    # A full round trip as the ACL user: enqueue, run, result.
    status, answer = call(main, "POST", "/enqueue", {"type": "record", "payload": {"ledger": str(book)}})
    assert status == 202, answer
    wait_for(lambda: call(main, "GET", f"/jobs/{answer['id']}")[1]["status"] == "succeeded", 10, "the job to succeed")
    assert book.read_text().split()[0] == answer["id"]
    for other in others:
        status, answer = call(other, "POST", "/enqueue", {"type": "echo", "payload": {}})
        assert status == 202, answer
    # Things that put errors in the log: wrong tokens, and every Redis connection killed under them.
    for service in (main, *others):
        assert call(service, "GET", "/metrics", token=TOKEN[:-1] + "x")[0] == 401
        assert call(service, "GET", "/metrics", token=None)[0] == 401
    with redis.Redis(port=port, password=DEFAULT_PASSWORD) as admin:
        admin.client_kill_filter(_type="normal", skipme=True)
    status, answer = call(main, "POST", "/enqueue", {"type": "record", "payload": {"ledger": str(book)}})
    if status == 503:  # the connections were just killed: a client tries again
        status, answer = call(main, "POST", "/enqueue", {"type": "record", "payload": {"ledger": str(book)}})
    assert status == 202, answer
    wait_for(lambda: len(book.read_text().splitlines()) == 2, 10, "the second job to run")
    for what in ("/workers", "/metrics"):
        status, body = call(main, "GET", what)
        shown = orjson.dumps(body).decode()
        assert status == 200 and not [s for s in (TOKEN, ACL_PASSWORD, DEFAULT_PASSWORD) if s in shown]
    for s in (main, *others):
        s.signal(15)
        assert s.wait(15) == 0

    secrets = [TOKEN, ACL_PASSWORD, DEFAULT_PASSWORD, quote(ACL_PASSWORD, safe=""), quote(DEFAULT_PASSWORD, safe="")]
    for s in (main, *others):
        log = s.log_path.read_text()
        assert "service_started" in log and "***" in log, "the Redis URL is logged, redacted"
        assert not secrets_in(s.log_path, secrets), f"{s.directory.name}/logs.txt: {secrets_in(s.log_path, secrets)}"
        assert not secrets_in(s.directory / "stderr.txt", secrets), s.read_stderr()
    started = [e for e in read_log(main.log_path) if e["event"] == "service_started"][0]
    assert started["redis"] == f"redis://{ACL_USER}:***@127.0.0.1:{port}/0"


def tls_files(directory: Path) -> dict[str, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a certificate for the TLS test")
    directory.mkdir(parents=True, exist_ok=True)
    files = {name: directory / name for name in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "ext")}
    files["ext"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=workqueue test CA",
        "-keyout", str(files["ca.key"]), "-out", str(files["ca.crt"]))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(files["server.key"]),
        "-out", str(files["server.csr"]))
    run("x509", "-req", "-in", str(files["server.csr"]), "-CA", str(files["ca.crt"]), "-CAkey", str(files["ca.key"]),
        "-CAcreateserial", "-days", "2", "-extfile", str(files["ext"]), "-out", str(files["server.crt"]))
    return files


@pytest.mark.timeout(90)
def test_rediss_url_with_tls_runs_a_job(services: Any, tmp_path: Path) -> None:
    files = tls_files(tmp_path / "tls")
    tls_port = free_port()
    try:
        server = start_redis(tmp_path / "redis-tls", None, "--tls-port", str(tls_port),
                             "--tls-cert-file", str(files["server.crt"]), "--tls-key-file", str(files["server.key"]),
                             "--tls-ca-cert-file", str(files["ca.crt"]), "--tls-auth-clients", "no")
    except AssertionError as e:  # start_redis: "redis-server exited: <its log>"
        if "tls" in str(e).lower() or "Bad directive" in str(e):
            pytest.skip(f"this redis-server build has no TLS support: {str(e)[-200:]}")
        raise
    try:
        url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={quote(str(files['ca.crt']), safe='')}"
        book = tmp_path / "ledger.txt"
        service = services("tls", "--role", "both", "--config",
                           str(write_config(tmp_path / "cfg", url, lease=1.0))).wait_ready()
        req = urllib.request.Request(f"{service.url}/enqueue", method="POST",
                                     headers={"Content-Type": "application/json"},
                                     data=orjson.dumps({"type": "record", "payload": {"ledger": str(book)}}))
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 202
            job_id = orjson.loads(r.read())["id"]
        wait_for(lambda: book.exists() and job_id in book.read_text(), 10, "the job to run over TLS")
        # It really went over TLS: the plain port saw no client of ours, the TLS port did.
        with server.client() as c:
            clients = c.client_list()
        plain = [cl for cl in clients if cl["laddr"].endswith(f":{server.port}")]
        assert all(cl["cmd"] in ("ping", "client|list") for cl in plain), plain  # only the test's own
        assert [cl for cl in clients if cl["laddr"].endswith(f":{tls_port}")], clients
        # And it verifies the certificate: without the CA it refuses to talk.
        bad = services("tls-unverified", "--role", "producer", "--config",
                       str(write_config(tmp_path / "cfg-bad", f"rediss://127.0.0.1:{tls_port}/0"))).wait_ready()
        req = urllib.request.Request(f"{bad.url}/readyz")
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        assert status == 503, "a self-signed certificate must not be accepted without its CA"
    finally:
        stop_redis(server)
