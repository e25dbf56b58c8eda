"""The hello task type: a complete, small workqueue plugin to copy when writing your own.

    curl -X POST localhost:8080/enqueue -H 'Content-Type: application/json' \
      -d '{"type": "hello", "payload": {"name": "Ada"}}'

Its settings come from the `[plugins.hello]` table of config.toml: `greeting` (default "Hello").
"""

from __future__ import annotations

from typing import Any

from workqueue import JobContext, PermanentError, task

__all__ = ["hello"]

# The payload's shape, as JSON Schema. The producer checks it at enqueue, so a bad payload is
# answered with 422 naming the field ("payload.name: ...") and nothing is enqueued.
SCHEMA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "shout": {"type": "boolean"},
    },
}


def check_name(payload: dict[str, Any]) -> None:
    """Checks JSON Schema cannot express; a ValueError's message starts with the field name."""
    if not payload["name"].strip():
        raise ValueError("name: expected some non-blank text")


@task(schema=SCHEMA, validate=check_name, timeout=10, retries=2)
async def hello(payload: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Greet `name`. An `async def` handler runs on the event loop: await, never block, in it."""
    name = payload["name"].strip()
    if name.lower() == "nobody":
        # Retrying cannot change the answer: fail now, without retrying. The job goes to the
        # dead-letter store with this message as its error.
        raise PermanentError("name: 'nobody' cannot be greeted")
    greeting = ctx.settings.get("greeting", "Hello")
    message = f"{greeting}, {name}!"
    if payload.get("shout"):
        message = message.upper()
    # One JSON line in logs.txt, carrying this job's id, type, queue and attempt.
    ctx.log("greeted", name=name)
    # Any JSON-serialisable value becomes the job's result (GET /jobs/<id>).
    return {"message": message, "attempt": ctx.attempt}
