"""`python -m workqueue` and the `workqueue` script: a first argument that names a client command
goes to the command line client (`workqueue.client.cli`); anything else runs the service
(`workqueue.service`), `serve` saying so explicitly. Each side is imported only when chosen, so a
client command does not wait for aiohttp and redis to load, nor a worker for httpx and rich.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

COMMANDS = frozenset({"enqueue", "job", "jobs", "cancel", "dead", "queues", "pause", "resume", "workers", "stats"})


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        from .client import cli

        return cli.main(args)
    from . import service

    return service.main(args[1:] if args[:1] == ["serve"] else args)


if __name__ == "__main__":
    sys.exit(main())
