"""GET /openapi.json: an OpenAPI 3.1 document of every route, built from the same field definitions
that validate requests (`specs.FIELDS`) and from each loaded task type's payload schema, so it
cannot drift from the code and shows the plugins this process has. CI runs schemathesis against a
live service from it (tests/api/test_openapi.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import Settings
from ..job import Status
from ..plugins import TaskType
from ..specs import FIELDS, MAX_KEY_LENGTH, QUEUE_PATTERN

JSON = "application/json"
ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
TIME = {"type": ["string", "null"], "format": "date-time"}
LISTED = [s.value for s in (Status.QUEUED, Status.ACTIVE, Status.SCHEDULED, Status.RETRYING, Status.SUCCEEDED,
                            Status.DEAD, Status.CANCELLED)]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def answer(description: str, schema: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {JSON: {"schema": schema}}
    out.update(extra)
    return out


def errors(*statuses: int) -> dict[str, Any]:
    """The error answers of a route: every one is `{"error": "..."}`; 503 carries Retry-After."""
    why = {400: "a bad parameter or body (the message names it)", 401: "missing or wrong bearer token",
           404: "no such job", 409: "conflict (the message says with what)", 413: "body or batch too large",
           415: "not JSON", 422: "a field does not fit (the message names it)",
           503: "Redis unavailable, out of memory, failing over, or the queue is full: try again"}
    out = {str(s): answer(why[s], ref("Error")) for s in statuses}
    if 503 in statuses:
        out["503"]["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
    return out


def job_body(name: str | None, task: TaskType | None) -> dict[str, Any]:
    """A job object of one task type (or of any type), field by field."""
    properties = {f.name: {**f.schema, "description": f.description} for f in FIELDS}
    if name is not None:
        properties["type"] = {"const": name}
        if task is not None and task.options.schema is not None:
            properties["payload"] = dict(task.options.schema)
    return {"type": "object", "required": ["type", "payload"], "properties": properties,
            "additionalProperties": False,
            "description": "Field names are matched case-insensitively (`Retries` is `retries`); "
                           "give either delay or run_at."}


def document(settings: Settings, tasks: dict[str, TaskType]) -> dict[str, Any]:
    job = ({"oneOf": [ref(f"Job_{name}") for name in sorted(tasks)]} if tasks
           else job_body(None, None))
    types = {f"Job_{name}": job_body(name, task) for name, task in sorted(tasks.items())}
    common = (503, 401) if settings.api_token else (503,)
    job_id = {"name": "id", "in": "path", "required": True, "schema": ID}
    queue_param = {"name": "queue", "in": "query", "schema": {"type": "string", "pattern": f"^{QUEUE_PATTERN}$"}}
    type_param = {"name": "type", "in": "query", "schema": {"type": "string"}}
    paths: dict[str, Any] = {
        "/jobs": {"get": {
            "summary": "List one page of a queue's jobs in one status",
            "parameters": [queue_param, {"name": "status", "in": "query", "schema": {"enum": LISTED}}, type_param,
                           {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                        "maximum": 500}},
                           {"name": "cursor", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": answer("a page", ref("JobPage")), **errors(400, *common)}}},
        "/jobs/{id}": {
            "get": {"summary": "A job; with wait, once it has ended or when the wait runs out",
                    "parameters": [job_id, {"name": "wait", "in": "query",
                                            "schema": {"type": "number", "minimum": 0, "maximum": 60}}],
                    "responses": {"200": answer("the job", ref("Job")), **errors(400, 404, *common)}},
            "delete": {"summary": "Cancel a job", "parameters": [job_id],
                       "responses": {"200": answer("cancelled", ref("Cancelled")), **errors(404, 409, *common)}}},
        "/jobs/{id}/cancel": {"post": {
            "summary": "Cancel a job", "parameters": [job_id],
            "responses": {"200": answer("cancelled", ref("Cancelled")), **errors(404, 409, *common)}}},
        "/queues": {"get": {"summary": "Every queue ever used, with its jobs by status",
                            "responses": {"200": answer("the queues", ref("Queues")), **errors(*common)}}},
        "/dead": {"get": {
            "summary": "Dead jobs, most recent first",
            "parameters": [queue_param, type_param,
                           {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                        "maximum": 1000}},
                           {"name": "cursor", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": answer("a page", ref("DeadPage")), **errors(400, *common)}}},
        "/dead/retry": {"post": {
            "summary": "Re-drive every dead job that matches",
            "parameters": [queue_param, type_param,
                           {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                                        "maximum": 10000}}],
            "responses": {"202": answer("re-driven", ref("Redriven")), **errors(400, *common)}}},
        "/dead/{id}/retry": {"post": {
            "summary": "Re-drive one dead job", "parameters": [job_id],
            "responses": {"202": answer("queued again", ref("Requeued")), **errors(404, *common)}}},
        "/dead/{id}": {"delete": {
            "summary": "Delete one dead job", "parameters": [job_id],
            "responses": {"200": answer("deleted", ref("Deleted")), **errors(404, *common)}}},
        "/metrics": {"get": {
            "summary": "Job counts (JSON), or the Prometheus exposition when Accept asks for it",
            "responses": {"200": {"description": "the numbers", "content": {
                JSON: {"schema": ref("Metrics")}, "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}}}}, **errors(*common)}}},
        "/workers": {"get": {"summary": "Live worker processes",
                             "responses": {"200": answer("the workers", ref("Workers")), **errors(*common)}}},
        "/healthz": {"get": {"summary": "The process is alive", "security": [],
                             "responses": {"200": answer("alive", ref("Status"))}}},
        "/readyz": {"get": {"summary": "Redis answers",
                            "responses": {"200": answer("ready", ref("Status")), **errors(*common)}}},
        "/openapi.json": {"get": {"summary": "This document",
                                  "responses": {"200": answer("OpenAPI 3.1", {"type": "object"}),
                                                **errors(*common[1:])}}},
    }
    if settings.runs_producer:
        paths["/enqueue"] = {"post": {
            "summary": "Enqueue one job, or an array of jobs (all or nothing)",
            "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH}}],
            "requestBody": {"required": True, "content": {JSON: {"schema": {
                "oneOf": [job, {"type": "array", "minItems": 1, "maxItems": settings.max_batch, "items": job}]}}}},
            "responses": {
                "202": answer("accepted", {"oneOf": [ref("Enqueued"), {"type": "array", "items": ref("Enqueued")}]},
                              headers={"Location": {"schema": {"type": "string"}, "description": "/jobs/<id>"}},
                              links={"GetJob": {"operationId": "getJob", "parameters": {"id": "$response.body#/id"}}}),
                "200": answer("an idempotent repeat: the job the key already names", ref("Enqueued")),
                **errors(400, 409, 413, 415, 422, *common)}}}
    paths["/jobs/{id}"]["get"]["operationId"] = "getJob"
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "workqueue", "version": "1", "description": "A background job service on Redis."},
        "paths": paths,
        "components": {"schemas": {**SCHEMAS, **types}},
    }
    if settings.api_token:
        doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        doc["security"] = [{"bearer": []}]
    return doc


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "Job": {"type": "object", "required": ["id", "type", "queue", "status", "attempts", "retries", "priority",
                                           "enqueued_at", "run_at", "started_at", "finished_at", "payload",
                                           "result", "error"],
            "properties": {"id": ID, "type": {"type": "string"}, "queue": {"type": "string"},
                           "status": {"enum": [s.value for s in Status]}, "attempts": {"type": "integer"},
                           "retries": {"type": "integer"}, "priority": {"type": "integer"}, "enqueued_at": TIME,
                           "run_at": TIME, "started_at": TIME, "finished_at": TIME, "payload": {"type": "object"},
                           "result": {}, "error": {"type": ["string", "null"]}, "died_at": TIME}},
    "JobPage": {"type": "object", "required": ["jobs", "next_cursor"],
                "properties": {"jobs": {"type": "array", "items": ref("Job")},
                               "next_cursor": {"type": ["string", "null"]}}},
    "DeadPage": {"type": "object", "required": ["jobs", "next_cursor"],
                 "properties": {"jobs": {"type": "array", "items": ref("Job")},
                                "next_cursor": {"type": ["string", "null"]}}},
    "Enqueued": {"type": "object", "required": ["id", "status", "type", "queue"],
                 "properties": {"id": ID, "status": {"type": "string"}, "type": {"type": "string"},
                                "queue": {"type": "string"}, "duplicate": {"type": "boolean"}}},
    "Cancelled": {"type": "object", "required": ["id", "status", "previous_status"],
                  "properties": {"id": ID, "status": {"type": "string"}, "previous_status": {"type": "string"}}},
    "Requeued": {"type": "object", "required": ["id", "status", "queue"],
                 "properties": {"id": ID, "status": {"type": "string"}, "queue": {"type": "string"}}},
    "Redriven": {"type": "object", "required": ["redriven", "ids"],
                 "properties": {"redriven": {"type": "integer"}, "ids": {"type": "array", "items": ID}}},
    "Deleted": {"type": "object", "required": ["id", "deleted"],
                "properties": {"id": ID, "deleted": {"type": "boolean"}}},
    "Queues": {"type": "object", "required": ["queues"], "properties": {"queues": {"type": "array", "items": {
        "type": "object", "required": ["name", "paused", "queued", "scheduled", "active", "blocked", "dead", "limits"],
        "properties": {"name": {"type": "string"}, "paused": {"type": "boolean"}, "queued": {"type": "integer"},
                       "scheduled": {"type": "integer"}, "active": {"type": "integer"},
                       "blocked": {"type": "integer"}, "dead": {"type": "integer"},
                       "limits": {"type": "array", "items": {"type": "object"}}}}}}},
    "Metrics": {"type": "object", "required": ["total_jobs_in_queue", "jobs_done", "jobs_failed"],
                "properties": {"total_jobs_in_queue": {"type": "integer"}, "jobs_done": {"type": "integer"},
                               "jobs_failed": {"type": "integer"}, "queues": {"type": "object"}}},
    "Workers": {"type": "object", "required": ["count", "workers"],
                "properties": {"count": {"type": "integer"},
                               "workers": {"type": "array", "items": {"type": "object"}}}},
    "Status": {"type": "object", "required": ["status"],
               "properties": {"status": {"type": "string"},
                              "warnings": {"type": "array", "items": {"type": "string"}}}},
}
