"""The send_email task type: build a real RFC 5322 message and deliver it to an outbox directory.

The outbox is the development backend: one `<job id>.eml` file per job, readable by any mail client.
Settings (`[plugins.send_email]`): `sender` (From address), `outbox` (directory).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr
from pathlib import Path
from typing import Any, Protocol

__all__ = ["send_email"]


class Context(Protocol):
    job_id: str
    settings: Mapping[str, Any]


def send_email(payload: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """Write the message described by `payload` to `<outbox>/<job id>.eml`.

    Payload: `to` (an address or a list of them), `subject`, optional `body`.
    """
    if not isinstance(payload, Mapping):
        raise ValueError("payload: expected an object with to, subject and body")
    to = _recipients(payload.get("to"))
    subject = payload.get("subject")
    if not isinstance(subject, str):
        raise ValueError("payload.subject: expected a string")
    body = payload.get("body", "")
    if not isinstance(body, str):
        raise ValueError("payload.body: expected a string")
    sender = ctx.settings.get("sender", "workqueue@localhost")
    if not isinstance(sender, str) or not _is_address(sender):
        raise ValueError("settings.sender: expected an email address")
    # The job id names the file; refuse anything that would put it somewhere else.
    if not ctx.job_id or ctx.job_id in {".", ".."} or Path(ctx.job_id).name != ctx.job_id:
        raise ValueError(f"ctx.job_id: {ctx.job_id!r} cannot be used as a file name")

    message = EmailMessage()
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(localtime=True)
    message["Message-ID"] = make_msgid(domain=parseaddr(sender)[1].rpartition("@")[2])
    message.set_content(body)

    outbox = Path(ctx.settings.get("outbox", "outbox")).resolve()
    outbox.mkdir(parents=True, exist_ok=True)
    path = outbox / f"{ctx.job_id}.eml"
    _write_atomic(path, message.as_bytes())
    return {"outbox_file": str(path), "to": to}


def _recipients(value: object) -> list[str]:
    addresses = [value] if isinstance(value, str) else value
    if (
        not isinstance(addresses, list)
        or not addresses
        or not all(isinstance(a, str) and _is_address(a) for a in addresses)
    ):
        raise ValueError("payload.to: expected an email address or a list of them")
    return [a.strip() for a in addresses]


def _is_address(value: str) -> bool:
    # Line breaks would let a payload add headers of its own; the rest is parseaddr's judgement.
    if "\r" in value or "\n" in value:
        return False
    local, at, domain = parseaddr(value)[1].rpartition("@")
    return bool(local and at and domain)


def _write_atomic(path: Path, data: bytes) -> None:
    # Temp file + rename: a reader never sees half a message, and a retried job replaces its
    # earlier file instead of adding a second one.
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
