"""The HTTP ceiling: a bare aiohttp app that reads and parses the same JSON as POST /enqueue and
answers 202 with a body shaped like workqueue's, and does nothing else (no validation, no Redis).
Served exactly as workqueue serves (web.run_app), on the same aiohttp.

    python bench/ceiling.py --port 8099
"""

from __future__ import annotations

import argparse
import os

import orjson
from aiohttp import web


async def enqueue(request: web.Request) -> web.Response:
    job = orjson.loads(await request.read())
    jobs = job if isinstance(job, list) else [job]
    answers = [{"id": os.urandom(16).hex(), "status": "queued", "type": j["type"], "queue": "default"} for j in jobs]
    return web.Response(status=202, body=orjson.dumps(answers if isinstance(job, list) else answers[0]),
                        content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status":"ok"}', content_type="application/json")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    app = web.Application()
    app.router.add_post("/enqueue", enqueue)
    app.router.add_get("/healthz", healthz)
    web.run_app(app, host=args.host, port=args.port, print=None, shutdown_timeout=1)


if __name__ == "__main__":
    main()
