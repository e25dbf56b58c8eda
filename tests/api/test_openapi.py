"""GET /openapi.json (DESIGN section 12): the document covers every route and the loaded task types'
payload schemas, and schemathesis, run against a live service from it, finds nothing: no server
error, no status code, content type or response body the document does not describe, and the
stateful phase (POST /enqueue, then its Location) holds too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import ROOT, fixture_tasks
from tests.support import write_config
from workqueue.api import create_app
from workqueue.config import build

CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def routes(app: web.Application) -> set[tuple[str, str]]:
    out = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if route.method != "HEAD" and path:
            out.add((route.method.lower(), path))
    return out


async def test_the_document_describes_every_route_and_every_loaded_task_type(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    tasks = fixture_tasks()
    c = await make_client(make_settings(redis_url=redis_url, api_token="t0ken"), tasks)
    response = await c.get("/openapi.json", headers={"Authorization": "Bearer t0ken"})
    doc = await response.json()
    assert doc["openapi"].startswith("3.1")
    documented = {(method, path) for path, ops in doc["paths"].items() for method in ops}
    assert documented == routes(create_app(build({"plugin_dirs": []}, source="test"), tasks))
    # Every job field the server checks, and each task type's payload schema.
    body = doc["paths"]["/enqueue"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    one_of = body["oneOf"][0]["oneOf"]
    assert {r["$ref"].rsplit("/", 1)[1] for r in one_of} == {f"Job_{name}" for name in tasks}
    from workqueue.specs import REQUEST_FIELDS
    for name in tasks:
        schema = doc["components"]["schemas"][f"Job_{name}"]
        assert set(schema["properties"]) == set(REQUEST_FIELDS)
        assert schema["properties"]["type"] == {"const": name}
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert doc["paths"]["/healthz"]["get"]["security"] == []


@pytest.mark.timeout(240)
def test_schemathesis_finds_nothing_against_a_live_service(services: Any, redis_url: str, tmp_path: Path) -> None:
    binary = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    # The built-in task types (their real plugins): the test fixtures' `crash` would end the process.
    config = write_config(tmp_path / "cfg", redis_url, lease=1.0, plugin_dirs=[str(ROOT / "plugins")])
    service = services("api", "--config", str(config)).wait_ready()
    done = subprocess.run(
        [binary, "run", f"{service.url}/openapi.json", "--checks", CHECKS,
         "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", "15", "--max-time", "45",
         "--seed", "7", "--generation-database", "none", "--workers", "2", "--no-color",
         "--request-timeout", "15", "--suppress-health-check", "all"],
        capture_output=True, text=True, timeout=200, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.api.schemathesis_hooks", "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert service.process.poll() is None
