"""Running the service: `python -m workqueue [serve] [--role ...] [--config ...] ...` (DESIGN section 3):
settings from flags, environment and file, the plugins, the app on its port until SIGTERM."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web

from . import config
from .api import create_app
from .errors import ConfigError, PluginError
from .plugins import load_plugins


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m workqueue", description="workqueue: a background job service on Redis. With no command, "
        "or `serve`, runs the service with these options.",
        epilog="Commands that talk to a running service instead: enqueue, job, jobs, cancel, dead, queues, pause, "
        "resume, workers, stats (python -m workqueue COMMAND --help).")
    p.add_argument("--role", choices=config.ROLES, help="producer (HTTP API), worker (runs jobs) or both")
    p.add_argument("--config", help="TOML config file (default ./config.toml if present)")
    p.add_argument("--redis", dest="redis_url", help="redis://, rediss://, unix:// or memory:// URL")
    p.add_argument("--host", help="address to listen on")
    p.add_argument("--port", type=int, help="port to listen on")
    p.add_argument("--concurrency", type=int, help="jobs run at once by this worker process")
    p.add_argument("--queues", help="queues this worker serves, comma-separated")
    p.add_argument("--plugins", dest="plugin_dirs", action="append", metavar="DIR",
                   help="a directory of drop-in plugins (repeatable)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    try:
        settings = config.load(args.config, os.environ, overrides)
        tasks = load_plugins([Path(d) for d in settings.plugin_dirs])
        app = create_app(settings, tasks)
    except (ConfigError, PluginError) as e:
        print(f"workqueue: {e}", file=sys.stderr)
        return 2

    def announce(_: str) -> None:
        # run_app calls this once it listens: a start-up failure before then prints only its own line.
        print(f"workqueue: {settings.role} on http://{settings.host}:{settings.port} "
              f"({', '.join(sorted(tasks)) or 'no task types'})", file=sys.stderr, flush=True)

    try:
        # A deeper listen backlog than aiohttp's 128: thousands of clients (waiting requests, a
        # burst of enqueues) may connect at once, and a full backlog makes them retry after a second.
        web.run_app(app, host=settings.host, port=settings.port, print=announce, access_log=None,
                    shutdown_timeout=5, handle_signals=True, backlog=1024)
    except ConfigError as e:  # found at start-up, once Redis could be asked
        print(f"workqueue: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            raise
        print(f"workqueue: cannot listen on {settings.host}:{settings.port} ({e.strerror or e}); "
              "choose another --port or --host, or stop what uses it", file=sys.stderr)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    # A thread still running an abandoned plain-function handler would hold the interpreter open
    # past the grace period; everything worth keeping has been recorded and flushed by now.
    os._exit(0)

