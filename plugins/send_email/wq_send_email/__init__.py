"""The send_email task type: build an RFC 5322 message and deliver it over SMTP or to an outbox.

Settings (`[plugins.send_email]`), all optional:

    backend   "file" (default): write each message to <outbox>/<job id>.eml, for development;
              "smtp": deliver through the server at host:port with aiosmtplib
    outbox    directory of the file backend (default "outbox")
    sender    the From address, e.g. "Shop <shop@example.com>" (default "workqueue@localhost")
    host      SMTP server (default "localhost")
    port      SMTP port (default 465 with tls, 587 with starttls, else 25)
    starttls  upgrade the connection with STARTTLS, and fail if the server cannot (default false)
    tls       implicit TLS from the first byte, as on port 465 (default false)
    ca_file   PEM bundle of CAs to trust for the server's certificate (default: the system's)
    username  log in as this user; the password is read from the environment variable
              WORKQUEUE_SMTP_PASSWORD, never from the config file, and is never logged
    timeout   seconds to wait for the server at each step (default 30)

Failures that a retry cannot fix (the server answers 5xx: recipient or sender refused, message
rejected, authentication failed) raise PermanentError; connection errors, timeouts and 4xx answers
are ordinary exceptions, so the job is retried. A message the server accepted for some recipients
and refused for others also fails permanently, naming the refused ones: a retry would send the
others a second copy.
"""

from __future__ import annotations

import asyncio
import email.policy
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any, Protocol

import aiosmtplib

from workqueue import PermanentError, task
from workqueue.files import write_atomic

__all__ = ["send_email"]

PASSWORD_VARIABLE = "WORKQUEUE_SMTP_PASSWORD"
ADDRESS_FIELDS = ("to", "cc", "bcc", "reply_to")
MAX_RECIPIENTS = 100

_ADDRESS = {"type": "string", "minLength": 1, "maxLength": 320}
# minLength and maxLength only apply to strings, minItems and items only to arrays.
_ADDRESSES = {"type": ["string", "array"], "minLength": 1, "maxLength": 320,
              "items": _ADDRESS, "minItems": 1, "maxItems": MAX_RECIPIENTS}
SCHEMA = {
    "type": "object",
    "required": ["to", "subject"],
    "additionalProperties": False,
    "properties": {
        "to": _ADDRESSES,
        "cc": _ADDRESSES,
        "bcc": _ADDRESSES,
        "reply_to": _ADDRESSES,
        "subject": {"type": "string", "maxLength": 998},
        "body": {"type": "string"},
        "html": {"type": "string"},
    },
}


class Context(Protocol):
    job_id: str
    settings: Mapping[str, Any]

    def log(self, event: str, level: str = "info", **fields: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class Settings:
    backend: str = "file"
    outbox: str = "outbox"
    sender: str = "workqueue@localhost"
    host: str = "localhost"
    port: int | None = None
    starttls: bool = False
    tls: bool = False
    ca_file: str = ""
    username: str = ""
    timeout: float = 30.0


# local@domain.tld (or @localhost) in ASCII with no spaces, quotes or line breaks.
PLAIN_ADDRESS = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}|localhost)\Z"
)


def validate_payload(payload: Mapping[str, Any]) -> None:
    """The checks JSON Schema cannot make (the schema has passed): every address parses, the
    subject is one line, and there are not too many recipients."""
    count = 0
    for name in ADDRESS_FIELDS:
        if name in payload:
            value = payload[name]
            values = [value] if isinstance(value, str) else value
            for i, item in enumerate(values):
                # Plain addresses take a regular expression (a microsecond); anything else, such
                # as "Ann <ann@example.com>", the standard library's parser (hundreds of them).
                if not PLAIN_ADDRESS.match(item):
                    parse_address(item, name if isinstance(value, str) else f"{name}[{i}]")
            count += len(values) if name != "reply_to" else 0
    if count > MAX_RECIPIENTS:
        raise ValueError(f"to: more than {MAX_RECIPIENTS} recipients in to, cc and bcc together")
    if "\r" in payload["subject"] or "\n" in payload["subject"]:
        raise ValueError("subject: expected one line (no line breaks)")


@task(schema=SCHEMA, validate=validate_payload, timeout=120)
async def send_email(payload: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """Send the message described by `payload`.

    Payload: `to` (an address or a list of them), `subject`, optional `body` (plain text), `html`
    (sent as the alternative to `body`), `cc`, `bcc` (receive the message, appear in no header)
    and `reply_to`. An address may carry a display name: "Ann Lee <ann@example.com>".
    """
    settings = read_settings(ctx.settings)
    sender = parse_address(settings.sender, "[plugins.send_email] sender")
    message = build_message(payload, sender, ctx.job_id)
    # The SMTP envelope: every To, Cc and Bcc address, each once.
    recipients = list(dict.fromkeys(
        a.addr_spec for n in ("to", "cc", "bcc") for a in addresses(payload.get(n, []), n)))
    result: dict[str, Any] = {"backend": settings.backend, "message_id": message["Message-ID"],
                              "recipients": len(recipients)}
    if settings.backend == "file":
        result["path"] = await asyncio.to_thread(write_outbox, Path(settings.outbox), ctx.job_id, message)
    else:
        await deliver(message, sender.addr_spec, recipients, settings)
    ctx.log("email_sent", backend=settings.backend, recipients=len(recipients),
            message_id=message["Message-ID"])
    return result


def build_message(payload: Mapping[str, Any], sender: Address, job_id: str) -> EmailMessage:
    message = EmailMessage(policy=email.policy.SMTP)
    message["From"] = sender
    message["To"] = addresses(payload["to"], "to")
    for name, header in (("cc", "Cc"), ("reply_to", "Reply-To")):
        if name in payload:
            message[header] = addresses(payload[name], name)
    # Bcc recipients only go into the SMTP envelope: a Bcc header would show them to everyone.
    message["Subject"] = payload["subject"]
    message["Date"] = formatdate(localtime=True)
    # The same id on every attempt of a job, so a duplicate after a retry can be recognised.
    message["Message-ID"] = f"<{job_id}.workqueue@{sender.domain}>"
    message.set_content(payload.get("body", ""))
    if "html" in payload:
        message.add_alternative(payload["html"], subtype="html")
    return message


async def deliver(message: EmailMessage, sender: str, recipients: list[str], settings: Settings) -> None:
    password = os.environ.get(PASSWORD_VARIABLE) or None
    if settings.username and password is None:
        raise ValueError(f"[plugins.send_email] username is set but {PASSWORD_VARIABLE} is not")
    try:
        refused, _ = await aiosmtplib.send(
            message,
            sender=sender,
            recipients=recipients,
            hostname=settings.host,
            port=settings.port,
            username=settings.username or None,
            password=password if settings.username else None,
            use_tls=settings.tls,
            start_tls=settings.starttls,
            cert_bundle=settings.ca_file or None,
            timeout=settings.timeout,
        )
    except aiosmtplib.SMTPRecipientsRefused as e:
        # Every recipient refused. Permanent only if every refusal was: a 4xx may pass later.
        reasons = {r.recipient: r for r in e.recipients}
        if all(r.code >= 500 for r in e.recipients):
            raise PermanentError(f"the SMTP server refused every recipient: {describe(reasons)}") from e
        raise
    except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        raise  # no connection, no greeting, or no answer: the server may be back soon
    except aiosmtplib.SMTPResponseException as e:
        if e.code >= 500:
            raise PermanentError(f"the SMTP server answered {e.code} {e.message}") from e
        raise
    except aiosmtplib.SMTPException as e:
        # The server lacks what the settings ask for (STARTTLS, AUTH, SMTPUTF8): only a change
        # of [plugins.send_email] or of the server can help.
        raise PermanentError(f"SMTP server {settings.host}:{settings.port or 'default port'}: {e}") from e
    if refused:
        # Delivered to the others already, so a retry would send them a second copy.
        raise PermanentError(f"delivered to {len(recipients) - len(refused)} of {len(recipients)} "
                             f"recipients; the SMTP server refused {describe(refused)}")


def describe(refused: Mapping[str, Any]) -> str:
    return "; ".join(f"{address}: {r.code} {r.message}" for address, r in refused.items())


def write_outbox(outbox: Path, job_id: str, message: EmailMessage) -> str:
    # The job id names the file; refuse anything that would put it somewhere else.
    if not job_id or job_id in {".", ".."} or Path(job_id).name != job_id:
        raise PermanentError(f"job id {job_id!r} cannot be used as a file name")
    outbox = outbox.resolve()
    outbox.mkdir(parents=True, exist_ok=True)
    path = outbox / f"{job_id}.eml"
    write_atomic(path, message.as_bytes())
    return str(path)



def addresses(value: str | Sequence[str], field: str) -> list[Address]:
    if isinstance(value, str):
        return [parse_address(value, field)]
    return [parse_address(item, f"{field}[{i}]") for i, item in enumerate(value)]


def parse_address(value: str, field: str) -> Address:
    """One address, as the standard library's RFC 5322 parser reads it; ValueError names `field`."""
    shown = repr(value if len(value) <= 80 else value[:77] + "...")
    if any(c in value for c in "\r\n\0"):
        raise ValueError(f"{field}: {shown} contains a line break or NUL")
    try:
        header = email.policy.default.header_factory("to", value)
        parsed: list[Address] = [a for group in header.groups for a in group.addresses]
        defects = len(header.defects)
    except Exception:  # the parser fails on some malformed input with IndexError and the like
        parsed, defects = [], 1
    if defects or len(parsed) != 1:
        raise ValueError(f"{field}: {shown} is not an email address")
    address = parsed[0]
    domain = address.domain
    if not address.username or not domain or not ("." in domain or domain.lower() == "localhost"):
        raise ValueError(f"{field}: {shown} is not an email address (expected name@domain.tld)")
    if not address.addr_spec.isascii():
        raise ValueError(f"{field}: {shown} is not supported: international addresses need SMTPUTF8")
    return address


def read_settings(table: Mapping[str, Any]) -> Settings:
    """Settings from the `[plugins.send_email]` table; ValueError names the key at fault."""
    where = "[plugins.send_email]"
    known = set(Settings.__slots__)
    for key in table:
        if key == "password":
            raise ValueError(f"{where} password: not read from the config file; "
                             f"set the environment variable {PASSWORD_VARIABLE} instead")
        if key not in known:
            raise ValueError(f"{where} {key}: unknown setting (expected one of {', '.join(sorted(known))})")
    values = dict(table)
    for key in ("backend", "outbox", "sender", "host", "ca_file", "username"):
        if key in values and not isinstance(values[key], str):
            raise ValueError(f"{where} {key}: expected a string (got {values[key]!r})")
    for key in ("starttls", "tls"):
        if key in values and not isinstance(values[key], bool):
            raise ValueError(f"{where} {key}: expected true or false (got {values[key]!r})")
    settings = Settings(**values)
    if settings.backend not in ("file", "smtp"):
        raise ValueError(f"{where} backend: expected \"file\" or \"smtp\" (got {settings.backend!r})")
    port = settings.port
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise ValueError(f"{where} port: expected an integer from 1 to 65535 (got {port!r})")
    timeout = settings.timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{where} timeout: expected a number of seconds > 0 (got {timeout!r})")
    if settings.tls and settings.starttls:
        raise ValueError(f"{where} starttls: cannot be combined with tls (pick one: 465 tls, 587 starttls)")
    return settings
