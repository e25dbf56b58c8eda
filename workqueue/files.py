"""File helpers for plugins that write results to disk: atomic writes, paths kept inside a directory.

Handlers run at least once, so what they write must survive a retry: a temp file renamed into
place means a reader never sees half a file, and a retried job replaces its earlier output instead
of adding a second one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .errors import PermanentError


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file, fsync and rename."""
    # os.open with 0o666 lets the umask decide the mode, as for any file the service writes
    # (mkstemp would make it 0600, unreadable to a web server serving the directory).
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def inside(directory: Path, value: str, field: str) -> Path:
    """The absolute path `value` names (relative to `directory`, or absolute), if it is a file
    inside `directory` once symlinks are followed; else PermanentError naming payload.`field`."""
    path = (directory / value).resolve()
    if not path.is_relative_to(directory):
        raise PermanentError(f"payload.{field}: {value[:200]!r} resolves outside the media directory "
                             f"{directory}; give a path inside it")
    if path == directory:
        raise PermanentError(f"payload.{field}: {value[:200]!r} is the media directory, not a file in it")
    return path
