"""The plugins shipped under plugins/, doing their real work against real parts: an aiosmtpd server
started here, real PNG/JPEG files, PDFs opened with pypdf, and the HTTP API with a real Redis."""

from __future__ import annotations

import asyncio
import email.message
import email.parser
import email.policy
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pypdf
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from PIL import Image

from tests.conftest import ROOT, Service, free_port, read_log, wait_for
from tests.support import enqueue, http, wait_status
from workqueue import PermanentError
from workqueue.config import load as load_config
from workqueue.errors import ValidationError
from workqueue.job import JobContext
from workqueue.plugins import TaskType, load_plugins
from workqueue.specs import check_payload

Tasks = dict[str, TaskType]
PASSWORD = "pw-7c1e-never-logged"
SENDER = "Workqueue <noreply@example.com>"


@pytest.fixture(scope="module")
def builtins() -> Tasks:
    # search_path=[]: exactly the packages under plugins/, whatever else is installed.
    return load_plugins([ROOT / "plugins"], search_path=[])


@dataclass
class Logged:
    """A JobContext's log, kept in a list instead of logs.txt."""

    events: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        self.events.append({"event": event, "level": level, **fields})


def make_ctx(task_type: str, logged: Logged | None = None, **settings: Any) -> JobContext:
    return JobContext("0" * 31 + "1", task_type, "default", 1, settings, log=logged or Logged())


def run(tasks: Tasks, task_type: str, payload: dict[str, Any], ctx: JobContext,
        server: SmtpServer | None = None) -> Any:
    """Call a handler as the worker does: payload checked first, coroutines awaited. With a
    `server`, wait until it saw the client hang up before the event loop ends."""
    task = tasks[task_type]
    check_payload(task.options, payload)
    result = task.handler(payload, ctx=ctx)
    if not task.is_coroutine:
        return result

    async def settled() -> Any:
        try:
            return await result
        finally:
            if server is not None:
                await server.idle()

    return asyncio.run(settled())


def refused(tasks: Tasks, task_type: str, payload: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        check_payload(tasks[task_type].options, payload)
    assert caught.value.status == 422
    return str(caught.value)


def assert_names(message: str, expected: str) -> None:
    """`message` starts with `expected`; "payload: ...key" means it starts with "payload: " and
    names the key somewhere (a missing or unexpected key has no path of its own)."""
    start, _, key = expected.partition("...")
    assert message.startswith(start) and key in message, message


# -- a real SMTP server ---------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: bytes | None

    @property
    def message(self) -> email.message.EmailMessage:
        return parse_message(self.data)


def parse_message(data: bytes) -> email.message.EmailMessage:
    # SMTP and .eml files use CRLF line ends; compare contents with Python's "\n".
    parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(data.replace(b"\r\n", b"\n"))
    assert isinstance(parsed, email.message.EmailMessage)
    return parsed


class SmtpRecorder:
    """An aiosmtpd handler that keeps what it receives; it refuses the recipients in `refuse`
    with 550 and answers DATA with `data_reply`. `connections` counts the open ones."""

    def __init__(self) -> None:
        self.connections = 0
        self.received: list[Received] = []
        self.refuse: set[str] = set()
        self.data_reply = "250 OK"
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply.startswith("250"):
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content,
                                          session.ssl is not None, session.auth_data))
        return self.data_reply

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        self.logins.append((data.login, data.password))
        success = (data.login, data.password) == (b"mailer", PASSWORD.encode())
        # handled=False: aiosmtpd answers a failure with 535 itself.
        return AuthResult(success=success, handled=False, auth_data=data.login if success else None)


@dataclass
class SmtpServer:
    port: int
    recorder: SmtpRecorder
    ca_file: str = ""

    def settings(self, **extra: Any) -> dict[str, Any]:
        values = {"backend": "smtp", "host": "127.0.0.1", "port": self.port, "sender": SENDER, "timeout": 5}
        return values | ({"ca_file": self.ca_file} if self.ca_file else {}) | extra

    async def idle(self) -> None:
        """Wait until every client has hung up. A TLS client finishes closing its socket only
        after the server answered its close_notify; a loop ended before that leaves the socket
        for the garbage collector to report as unclosed."""
        deadline = time.monotonic() + 5
        while self.recorder.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.01)  # the server's FIN is on its way: a few more turns of the loop


class CountingController(Controller):
    """A Controller whose connections count themselves in the handler's `connections`."""

    def factory(self) -> SMTP:
        session = super().factory()
        recorder = self.handler
        lost = session.connection_lost
        recorder.connections += 1  # called once per accepted connection

        def connection_lost(error: Exception | None) -> None:
            recorder.connections -= 1
            lost(error)

        session.connection_lost = connection_lost  # type: ignore[method-assign]
        return session


def start_smtp(recorder: SmtpRecorder, **options: Any) -> Controller:
    controller = CountingController(recorder, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    return controller


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    """A plain SMTP server on a free port: no TLS, no authentication."""
    recorder = SmtpRecorder()
    controller = start_smtp(recorder)
    yield SmtpServer(controller.port, recorder)
    controller.stop()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


@pytest.fixture
def smtp_tls(certificate: tuple[Path, Path]) -> Iterator[SmtpServer]:
    """An SMTP server that requires STARTTLS, and AUTH as mailer with PASSWORD."""
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    recorder = SmtpRecorder()
    controller = start_smtp(recorder, tls_context=context, require_starttls=True, auth_required=True,
                            authenticator=recorder.authenticate)
    yield SmtpServer(controller.port, recorder, ca_file=str(cert))
    controller.stop()


# -- send_email -----------------------------------------------------------------------------------


def test_smtp_delivers_headers_parts_and_bcc_only_in_the_envelope(builtins: Tasks, smtp: SmtpServer) -> None:
    logged = Logged()
    payload = {
        "to": ["Zoë Müller <zoe@example.com>", "bob@example.org"],
        "cc": "carol@example.net",
        "bcc": ["hidden@example.com"],
        "reply_to": "help@example.com",
        "subject": "Grüße aus Zürich",
        "body": "Plain text body.\nSecond line.\n",
        "html": "<p>HTML <b>body</b></p>",
    }
    result = run(builtins, "send_email", payload, make_ctx("send_email", logged, **smtp.settings()), smtp)

    [received] = smtp.recorder.received
    assert received.mail_from == "noreply@example.com"
    assert received.rcpt_tos == ["zoe@example.com", "bob@example.org", "carol@example.net", "hidden@example.com"]
    message = received.message
    assert message["From"] == SENDER
    assert message["To"] == "Zoë Müller <zoe@example.com>, bob@example.org"
    assert message["Cc"] == "carol@example.net"
    assert message["Reply-To"] == "help@example.com"
    assert message["Subject"] == "Grüße aus Zürich"
    assert message["Bcc"] is None and b"hidden@" not in received.data
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_body(("plain",)).get_content() == "Plain text body.\nSecond line.\n"  # type: ignore[union-attr]
    assert message.get_body(("html",)).get_content() == "<p>HTML <b>body</b></p>\n"  # type: ignore[union-attr]
    assert result == {"backend": "smtp", "message_id": message["Message-ID"], "recipients": 4}
    assert logged.events == [{"event": "email_sent", "level": "info", "backend": "smtp", "recipients": 4,
                              "message_id": message["Message-ID"]}]


def test_message_id_is_the_same_on_every_attempt_of_a_job(builtins: Tasks, smtp: SmtpServer) -> None:
    payload = {"to": "a@example.com", "subject": "twice"}
    for _ in range(2):
        run(builtins, "send_email", payload, make_ctx("send_email", **smtp.settings()), smtp)
    first, second = (r.message["Message-ID"] for r in smtp.recorder.received)
    assert first == second == f"<{'0' * 31}1.workqueue@example.com>"


def test_every_recipient_refused_with_5xx_is_permanent(builtins: Tasks, smtp: SmtpServer) -> None:
    smtp.recorder.refuse = {"gone@example.com"}
    ctx = make_ctx("send_email", **smtp.settings())
    with pytest.raises(PermanentError, match=r"refused every recipient: gone@example.com: 550"):
        run(builtins, "send_email", {"to": "gone@example.com", "subject": "s"}, ctx, smtp)
    assert smtp.recorder.received == []


def test_some_recipients_refused_is_permanent_after_delivering_to_the_rest(
    builtins: Tasks, smtp: SmtpServer
) -> None:
    # A retry would send the accepted recipients a second copy, so the job ends here.
    smtp.recorder.refuse = {"gone@example.com"}
    ctx = make_ctx("send_email", **smtp.settings())
    payload = {"to": ["here@example.com", "gone@example.com"], "subject": "s"}
    with pytest.raises(PermanentError, match=r"delivered to 1 of 2 recipients.*gone@example.com: 550"):
        run(builtins, "send_email", payload, ctx, smtp)
    assert [r.rcpt_tos for r in smtp.recorder.received] == [["here@example.com"]]


@pytest.mark.parametrize(("reply", "permanent"), [("554 5.6.0 message rejected", True),
                                                  ("451 4.3.0 try again later", False)])
def test_data_refusal_is_permanent_only_for_5xx(
    builtins: Tasks, smtp: SmtpServer, reply: str, permanent: bool
) -> None:
    smtp.recorder.data_reply = reply
    ctx = make_ctx("send_email", **smtp.settings())
    with pytest.raises(Exception, match=reply[:3]) as caught:
        run(builtins, "send_email", {"to": "a@example.com", "subject": "s"}, ctx, smtp)
    assert isinstance(caught.value, PermanentError) == permanent


def test_connection_refused_is_an_ordinary_retryable_error(builtins: Tasks) -> None:
    ctx = make_ctx("send_email", backend="smtp", host="127.0.0.1", port=free_port(), timeout=5)
    with pytest.raises(ConnectionError) as caught:
        run(builtins, "send_email", {"to": "a@example.com", "subject": "s"}, ctx)
    assert not isinstance(caught.value, PermanentError)


def test_starttls_and_auth_with_the_password_from_the_environment(
    builtins: Tasks, smtp_tls: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKQUEUE_SMTP_PASSWORD", PASSWORD)
    logged = Logged()
    ctx = make_ctx("send_email", logged, **smtp_tls.settings(starttls=True, username="mailer"))
    run(builtins, "send_email", {"to": "a@example.com", "subject": "over TLS"}, ctx, smtp_tls)
    [received] = smtp_tls.recorder.received
    assert received.tls and received.login == b"mailer"
    assert received.message["Subject"] == "over TLS"
    assert PASSWORD not in repr(logged.events)


def test_failed_authentication_is_permanent(
    builtins: Tasks, smtp_tls: SmtpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKQUEUE_SMTP_PASSWORD", "wrong-password")
    ctx = make_ctx("send_email", **smtp_tls.settings(starttls=True, username="mailer"))
    with pytest.raises(PermanentError, match="535") as caught:
        run(builtins, "send_email", {"to": "a@example.com", "subject": "s"}, ctx, smtp_tls)
    assert "wrong-password" not in str(caught.value)
    assert smtp_tls.recorder.received == []


def test_a_server_without_starttls_is_refused_when_starttls_is_set(builtins: Tasks, smtp: SmtpServer) -> None:
    ctx = make_ctx("send_email", **smtp.settings(starttls=True))
    with pytest.raises(PermanentError, match="STARTTLS"):
        run(builtins, "send_email", {"to": "a@example.com", "subject": "s"}, ctx, smtp)
    assert smtp.recorder.received == []


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"password": "x"}, "password: not read from the config file; set the environment variable "
                            "WORKQUEUE_SMTP_PASSWORD"),
        ({"backend": "smtp", "username": "u"}, "username is set but WORKQUEUE_SMTP_PASSWORD is not"),
        ({"backend": "carrier-pigeon"}, 'backend: expected "file" or "smtp"'),
        ({"port": "25"}, "port: expected an integer"),
        ({"starttls": "yes"}, "starttls: expected true or false"),
        ({"tls": True, "starttls": True}, "starttls: cannot be combined with tls"),
        ({"hots": "x"}, "hots: unknown setting"),
        ({"sender": "nobody"}, "sender: 'nobody' is not an email address"),
    ],
)
def test_bad_settings_name_the_key(
    builtins: Tasks, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, settings: dict[str, Any], expected: str
) -> None:
    monkeypatch.delenv("WORKQUEUE_SMTP_PASSWORD", raising=False)
    ctx = make_ctx("send_email", outbox=str(tmp_path), **settings)
    with pytest.raises(ValueError, match=r"\[plugins\.send_email\] " + expected.replace("(", r"\(")):
        run(builtins, "send_email", {"to": "a@example.com", "subject": "s"}, ctx)


def test_file_backend_writes_a_parseable_eml_and_a_retry_replaces_it(builtins: Tasks, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    ctx = make_ctx("send_email", outbox=str(outbox))  # backend "file" is the default
    # The seed's example payload: no body.
    result = run(builtins, "send_email", {"to": "worldisweird2020@gmail.com", "subject": "testing producer"}, ctx)
    path = outbox / f"{ctx.job_id}.eml"
    assert result == {"backend": "file", "path": str(path.resolve()), "recipients": 1,
                      "message_id": f"<{ctx.job_id}.workqueue@localhost>"}
    message = parse_message(path.read_bytes())
    assert (message["From"], message["To"], message["Subject"]) == (
        "workqueue@localhost", "worldisweird2020@gmail.com", "testing producer")

    payload = {"to": "a@example.com", "bcc": "secret@example.com", "subject": "again", "body": "hi\n",
               "html": "<p>hi</p>"}
    run(builtins, "send_email", payload, ctx)
    assert os.listdir(outbox) == [path.name]
    data = path.read_bytes()
    message = parse_message(data)
    assert message["To"] == "a@example.com" and b"secret@" not in data
    assert message.get_body(("plain",)).get_content() == "hi\n"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"to": ["ok@example.com", "x@"], "subject": "s"}, "payload.to[1]: 'x@' is not an email address"),
        ({"to": "a@b", "subject": "s"}, "payload.to: 'a@b' is not an email address"),
        ({"to": "not-an-address", "subject": "s"}, "payload.to: 'not-an-address' is not an email address"),
        ({"to": "a@example.com\nBcc: x@evil.test", "subject": "s"}, "payload.to: 'a@example.com\\nBcc"),
        ({"to": "a@example.com, b@example.com", "subject": "s"}, "payload.to: 'a@example.com, b@example.com'"),
        ({"to": "a@example.com", "cc": ["c@example.com", "bad"], "subject": "s"}, "payload.cc[1]: 'bad'"),
        ({"to": "a@example.com", "bcc": "@example.com", "subject": "s"}, "payload.bcc: '@example.com'"),
        ({"to": "a@example.com", "reply_to": "r@", "subject": "s"}, "payload.reply_to: 'r@'"),
        ({"to": "a@example.com", "subject": "one\r\ntwo"}, "payload.subject: expected one line"),
        # Schema errors: the field, then the schema checker's own wording.
        ({"to": 3, "subject": "s"}, "payload.to: "),
        ({"to": [], "subject": "s"}, "payload.to: "),
        ({"to": ["a@example.com", 7], "subject": "s"}, "payload.to[1]: "),
        ({"to": ["a@example.com"] * 101, "subject": "s"}, "payload.to: "),
        ({"to": "a@example.com", "subject": "s", "body": 5}, "payload.body: "),
        ({"to": "a@example.com"}, "payload: ...subject"),
        ({"to": "a@example.com", "subject": "s", "attachments": []}, "payload: ...attachments"),
    ],
)
def test_payloads_that_cannot_be_sent_are_refused_naming_the_field(
    builtins: Tasks, payload: dict[str, Any], expected: str
) -> None:
    assert_names(refused(builtins, "send_email", payload), expected)


def test_display_names_and_localhost_are_valid_addresses(builtins: Tasks) -> None:
    payload = {"to": ['"Lee, Ann" <ann@example.com>', "root@localhost"], "cc": "Zoë <z@example.co.uk>",
               "subject": ""}
    check_payload(builtins["send_email"].options, payload)


# -- resize_image ---------------------------------------------------------------------------------


@pytest.fixture
def media(tmp_path: Path) -> Path:
    path = tmp_path / "media"
    (path / "photos").mkdir(parents=True)
    Image.new("RGBA", (40, 30), (255, 0, 0, 128)).save(path / "photos" / "in.png")
    Image.new("RGB", (64, 48), "blue").save(path / "photos" / "in.jpg", quality=90)
    return path


def image_info(path: str) -> tuple[str | None, tuple[int, int]]:
    with Image.open(path) as image:
        return image.format, image.size


def test_resize_png_keeps_format_and_names_the_result_by_size(builtins: Tasks, media: Path) -> None:
    ctx = make_ctx("resize_image", media_dir=str(media))
    result = run(builtins, "resize_image", {"source": "photos/in.png", "new_x": 20, "new_y": 10}, ctx)
    expected = media / "photos" / "in_20x10.png"
    assert result == {"path": str(expected), "width": 20, "height": 10}
    assert image_info(result["path"]) == ("PNG", (20, 10))
    umask = os.umask(0o022)
    os.umask(umask)
    assert expected.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as the umask allows


def test_resize_jpeg_to_other_formats_and_destinations(builtins: Tasks, media: Path) -> None:
    ctx = make_ctx("resize_image", media_dir=str(media))
    result = run(builtins, "resize_image", {"source": "photos/in.jpg", "new_x": 33, "new_y": 17}, ctx)
    assert result["path"].endswith("in_33x17.jpg") and image_info(result["path"]) == ("JPEG", (33, 17))

    absolute = str(media / "photos" / "in.jpg")
    result = run(builtins, "resize_image", {"source": absolute, "new_x": 8, "new_y": 6, "format": "webp"}, ctx)
    assert result["path"] == str(media / "photos" / "in_8x6.webp")
    assert image_info(result["path"]) == ("WEBP", (8, 6))

    payload = {"source": "photos/in.png", "new_x": 5, "new_y": 500, "dest": "out/tall.jpeg"}
    result = run(builtins, "resize_image", payload, ctx)
    assert result == {"path": str(media / "out" / "tall.jpeg"), "width": 5, "height": 500}
    assert image_info(result["path"]) == ("JPEG", (5, 500))

    payload = {"source": "photos/in.png", "new_x": 7, "new_y": 7, "dest": "small.gif", "format": "gif"}
    assert image_info(run(builtins, "resize_image", payload, ctx)["path"]) == ("GIF", (7, 7))

    # JSON numbers like 7.0 are integers to JSON Schema, and come out as 7.
    payload = {"source": "photos/in.png", "new_x": 7.0, "new_y": 3.0, "dest": "float.png"}
    result = run(builtins, "resize_image", payload, ctx)
    assert (type(result["width"]), result["width"], result["height"]) == (int, 7, 3)


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(directory.rglob("*"))}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("source", "../outside/secret.png"),
        ("source", "../../etc/passwd"),
        ("source", "{outside}/secret.png"),
        ("source", "/etc/passwd"),
        ("source", "link-to-file.png"),
        ("source", "link-to-dir/secret.png"),
        ("dest", "../outside/written.png"),
        ("dest", "{outside}/written.png"),
        ("dest", "link-to-dir/written.png"),
        ("dest", "link-to-file.png"),
    ],
)
def test_paths_resolving_outside_media_are_refused_and_nothing_outside_changes(
    builtins: Tasks, media: Path, tmp_path: Path, field: str, value: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (4, 4)).save(outside / "secret.png")
    (media / "link-to-file.png").symlink_to(outside / "secret.png")
    (media / "link-to-dir").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)

    payload: dict[str, Any] = {"source": "photos/in.png", "new_x": 2, "new_y": 2}
    payload[field] = value.format(outside=outside)
    ctx = make_ctx("resize_image", media_dir=str(media))
    with pytest.raises(PermanentError, match=rf"payload\.{field}: .* resolves outside the media directory"):
        run(builtins, "resize_image", payload, ctx)
    assert snapshot(outside) == before


def test_symlinks_inside_media_are_followed(builtins: Tasks, media: Path) -> None:
    (media / "alias.png").symlink_to(media / "photos" / "in.png")
    ctx = make_ctx("resize_image", media_dir=str(media))
    result = run(builtins, "resize_image", {"source": "alias.png", "new_x": 3, "new_y": 4}, ctx)
    assert result["path"] == str(media / "photos" / "in_3x4.png")


def test_missing_or_unreadable_sources_are_permanent(builtins: Tasks, media: Path) -> None:
    ctx = make_ctx("resize_image", media_dir=str(media))
    with pytest.raises(PermanentError, match=r"payload\.source: no such file .*'photos/absent.png'"):
        run(builtins, "resize_image", {"source": "photos/absent.png", "new_x": 2, "new_y": 2}, ctx)
    (media / "fake.png").write_text("not an image")
    with pytest.raises(PermanentError, match=r"payload\.source: not an image"):
        run(builtins, "resize_image", {"source": "fake.png", "new_x": 2, "new_y": 2}, ctx)
    Image.effect_noise((64, 64), 64).save(media / "noise.png")
    (media / "truncated.png").write_bytes((media / "noise.png").read_bytes()[:2000])
    with pytest.raises(PermanentError, match=r"payload\.source: cannot read the image"):
        run(builtins, "resize_image", {"source": "truncated.png", "new_x": 2, "new_y": 2}, ctx)


def test_sizes_above_the_configured_maximum_are_permanent(builtins: Tasks, media: Path) -> None:
    ctx = make_ctx("resize_image", media_dir=str(media), max_side=100, max_pixels=5000)
    with pytest.raises(PermanentError, match=r"payload\.new_y: 101 is more than the configured maximum of 100"):
        run(builtins, "resize_image", {"source": "photos/in.png", "new_x": 10, "new_y": 101}, ctx)
    with pytest.raises(PermanentError, match=r"100x100 is more than the configured maximum of 5000 pixels"):
        run(builtins, "resize_image", {"source": "photos/in.png", "new_x": 100, "new_y": 100}, ctx)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"new_x": True, "new_y": 5}, "payload.new_x: "),
        ({"new_x": 0, "new_y": 5}, "payload.new_x: "),
        ({"new_x": -3, "new_y": 5}, "payload.new_x: "),
        ({"new_x": "10", "new_y": 5}, "payload.new_x: "),
        ({"new_x": 2.5, "new_y": 5}, "payload.new_x: "),
        ({"new_x": 5, "new_y": 70000}, "payload.new_y: "),
        ({"new_x": 5}, "payload: ...new_y"),
        ({"new_x": 5, "new_y": 5, "format": "bmp"}, "payload.format: "),
        ({"new_x": 5, "new_y": 5, "dest": "out.txt"}, "payload.dest: 'out.txt' does not end in an image extension"),
        ({"new_x": 5, "new_y": 5, "dest": "o.png", "format": "jpeg"}, "payload.dest: the extension .png does not"),
        ({"new_x": 5, "new_y": 5, "source": "a\0b.png"}, "payload.source: contains a NUL character"),
    ],
)
def test_resize_payloads_are_checked_naming_the_field(
    builtins: Tasks, payload: dict[str, Any], expected: str
) -> None:
    assert_names(refused(builtins, "resize_image", {"source": "photos/in.png", **payload}), expected)


# -- generate_pdf ---------------------------------------------------------------------------------

UNICODE = "Grüße, Ελληνικά, Кириллица"


def test_generate_pdf_writes_extractable_unicode_text_over_pages(builtins: Tasks, tmp_path: Path) -> None:
    ctx = make_ctx("generate_pdf", media_dir=str(tmp_path / "media"))
    paragraph = "A paragraph long enough to wrap over several lines of the page. " * 8
    body = "\n\n".join([UNICODE] + [paragraph] * 12 + ["The\nlast\nparagraph."])
    result = run(builtins, "generate_pdf", {"title": "Quarterly Report: Zürich", "body": body}, ctx)

    path = tmp_path / "media" / f"{ctx.job_id}.pdf"
    assert result == {"path": str(path), "pages": result["pages"]}
    reader = pypdf.PdfReader(path)
    assert len(reader.pages) == result["pages"] >= 2
    text = "\n".join(page.extract_text() for page in reader.pages)
    assert "Quarterly Report: Zürich" in text
    assert UNICODE in text
    assert "The last paragraph." in text  # single line breaks wrap like spaces
    assert reader.metadata is not None and reader.metadata.title == "Quarterly Report: Zürich"


def test_characters_the_font_lacks_are_marked_and_listed(builtins: Tasks, tmp_path: Path) -> None:
    ctx = make_ctx("generate_pdf", media_dir=str(tmp_path))
    result = run(builtins, "generate_pdf", {"title": "t", "body": "Tokyo 東京 € —", "dest": "a/b.pdf"}, ctx)
    assert result == {"path": str(tmp_path / "a" / "b.pdf"), "pages": 1, "missing_characters": "東京"}
    text = pypdf.PdfReader(result["path"]).pages[0].extract_text()
    assert "Tokyo \ufffd\ufffd € —" in text


def test_generate_pdf_refuses_dest_outside_media(builtins: Tasks, tmp_path: Path) -> None:
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "out").symlink_to(tmp_path, target_is_directory=True)
    ctx = make_ctx("generate_pdf", media_dir=str(tmp_path / "media"))
    for dest in ("../escape.pdf", str(tmp_path / "escape.pdf"), "out/escape.pdf"):
        with pytest.raises(PermanentError, match=r"payload\.dest: .* resolves outside the media directory"):
            run(builtins, "generate_pdf", {"title": "t", "body": "b", "dest": dest}, ctx)
    assert not (tmp_path / "escape.pdf").exists()


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"body": "b"}, "payload: ...title"),
        ({"title": "t", "body": ["b"]}, "payload.body: "),
        ({"title": "t", "body": "b", "dest": "report.txt"}, "payload.dest: 'report.txt' does not end in .pdf"),
        ({"title": "t", "body": "b", "pages": 3}, "payload: ...pages"),
    ],
)
def test_pdf_payloads_are_checked_naming_the_field(builtins: Tasks, payload: dict[str, Any], expected: str) -> None:
    assert_names(refused(builtins, "generate_pdf", payload), expected)


# -- through the service: HTTP API, Redis and the worker ------------------------------------------


@pytest.mark.parametrize(
    ("job", "field"),
    [
        ({"type": "send_email", "payload": {"to": ["a@example.com", "x@"], "subject": "s"}}, "payload.to[1]: "),
        ({"type": "send_email", "payload": {"to": "a@example.com"}}, "payload: ...subject"),
        ({"type": "resize_image", "payload": {"source": "a.png", "new_x": 0, "new_y": 1}}, "payload.new_x: "),
        ({"type": "resize_image", "payload": {"source": "a.png", "new_x": 1, "new_y": 1, "dest": "a"}},
         "payload.dest: "),
        ({"type": "generate_pdf", "payload": {"title": 1, "body": ""}}, "payload.title: "),
        ({"type": "hello", "payload": {"name": ""}}, "payload.name: "),
        ([{"type": "hello", "payload": {"name": "ok"}}, {"type": "hello", "payload": {"name": " "}}],
         "[1].payload.name: "),
    ],
)
async def test_enqueue_refuses_bad_payloads_with_422_naming_the_field(
    builtins: Tasks, make_client: Any, make_settings: Any, redis_url: str, job: Any, field: str
) -> None:
    client = await make_client(make_settings(redis_url=redis_url), builtins)
    response = await client.post("/enqueue", json=job)
    assert response.status == 422
    assert_names((await response.json())["error"], field)
    metrics = await (await client.get("/metrics")).json()
    assert metrics["total_jobs_in_queue"] == 0


async def test_seed_example_is_delivered_over_smtp_through_the_service(
    builtins: Tasks, make_client: Any, make_settings: Any, redis_url: str, smtp: SmtpServer, tmp_path: Path
) -> None:
    settings = make_settings(redis_url=redis_url, plugins={"send_email": smtp.settings()})
    client = await make_client(settings, builtins)
    seed = {"type": "send_email", "Retries": 3,
            "payload": {"to": "worldisweird2020@gmail.com", "subject": "testing producer"}}
    response = await client.post("/enqueue", json=seed)
    assert response.status == 202, await response.text()
    job_id = (await response.json())["id"]

    job = await wait_status(client, job_id, "succeeded")
    [received] = smtp.recorder.received
    assert received.rcpt_tos == ["worldisweird2020@gmail.com"]
    assert received.message["Subject"] == "testing producer"
    assert job["result"] == {"backend": "smtp", "message_id": received.message["Message-ID"], "recipients": 1}
    await client.close()
    [sent] = [e for e in read_log(tmp_path / "logs.txt") if e["event"] == "email_sent"]
    assert (sent["job_id"], sent["type"], sent["recipients"]) == (job_id, "send_email", 1)


async def test_refused_recipient_goes_straight_to_dead(
    builtins: Tasks, make_client: Any, make_settings: Any, redis_url: str, smtp: SmtpServer
) -> None:
    smtp.recorder.refuse = {"gone@example.com"}
    client = await make_client(make_settings(redis_url=redis_url, plugins={"send_email": smtp.settings()}), builtins)
    job_id = await enqueue(client, type="send_email", retries=5,
                           payload={"to": "gone@example.com", "subject": "s"})
    job = await wait_status(client, job_id, "dead")
    assert job["attempts"] == 1
    assert "PermanentError" in job["error"] and "550" in job["error"]


async def test_unreachable_smtp_server_is_retried(
    builtins: Tasks, make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    plugins = {"send_email": {"backend": "smtp", "host": "127.0.0.1", "port": free_port(), "timeout": 2}}
    client = await make_client(make_settings(redis_url=redis_url, plugins=plugins), builtins)
    job_id = await enqueue(client, type="send_email", retries=1, payload={"to": "a@example.com", "subject": "s"})
    job = await wait_status(client, job_id, "dead")
    assert job["attempts"] == 2
    assert "SMTPConnectError" in job["error"]


async def test_smtp_password_is_used_and_never_logged(
    builtins: Tasks, make_client: Any, make_settings: Any, redis_url: str, smtp_tls: SmtpServer,
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("WORKQUEUE_SMTP_PASSWORD", PASSWORD)
    plugins = {"send_email": smtp_tls.settings(starttls=True, username="mailer")}
    client = await make_client(make_settings(redis_url=redis_url, plugins=plugins), builtins)
    delivered = await enqueue(client, type="send_email", payload={"to": "a@example.com", "subject": "s"})
    await wait_status(client, delivered, "succeeded")
    monkeypatch.setenv("WORKQUEUE_SMTP_PASSWORD", PASSWORD[::-1])
    refused_login = await enqueue(client, type="send_email", retries=3, payload={"to": "a@example.com", "subject": "s"})
    job = await wait_status(client, refused_login, "dead")
    assert job["attempts"] == 1 and "535" in job["error"]
    # aiosmtplib tries each mechanism the server offers before giving up.
    assert set(smtp_tls.recorder.logins) == {(b"mailer", PASSWORD.encode()), (b"mailer", PASSWORD[::-1].encode())}
    await client.close()
    log = (tmp_path / "logs.txt").read_text()
    assert "email_sent" in log and PASSWORD not in log and PASSWORD[::-1] not in log


async def test_image_and_pdf_jobs_run_in_the_worker(
    builtins: Tasks, make_client: Any, make_settings: Any, redis_url: str, media: Path
) -> None:
    plugins = {"resize_image": {"media_dir": str(media)}, "generate_pdf": {"media_dir": str(media)}}
    client = await make_client(make_settings(redis_url=redis_url, plugins=plugins), builtins)
    resize = await enqueue(client, type="resize_image", payload={"source": "photos/in.png", "new_x": 200, "new_y": 100})
    pdf = await enqueue(client, type="generate_pdf", payload={"title": "Q3", "body": UNICODE, "dest": "q3.pdf"})
    escape = await enqueue(client, type="resize_image", retries=3,
                           payload={"source": "../secret.png", "new_x": 2, "new_y": 2})

    job = await wait_status(client, resize, "succeeded")
    assert image_info(job["result"]["path"]) == ("PNG", (200, 100))
    job = await wait_status(client, pdf, "succeeded")
    assert job["result"] == {"path": str(media / "q3.pdf"), "pages": 1}
    assert UNICODE in pypdf.PdfReader(job["result"]["path"]).pages[0].extract_text()
    job = await wait_status(client, escape, "dead")
    assert job["attempts"] == 1 and "resolves outside the media directory" in job["error"]


# -- the example plugin ---------------------------------------------------------------------------


async def test_example_plugin_greets_logs_and_fails_permanently(
    builtins: Tasks, make_client: Any, make_settings: Any, redis_url: str, tmp_path: Path
) -> None:
    assert builtins["hello"].options.timeout == 10 and builtins["hello"].options.retries == 2
    client = await make_client(make_settings(redis_url=redis_url, plugins={"hello": {"greeting": "Hi"}}), builtins)
    greeted = await enqueue(client, type="hello", payload={"name": "Ada"})
    nobody = await enqueue(client, type="hello", payload={"name": "nobody"})
    job = await wait_status(client, greeted, "succeeded")
    assert job["result"] == {"message": "Hi, Ada!", "attempt": 1}
    assert job["retries"] == 2
    job = await wait_status(client, nobody, "dead")
    assert job["attempts"] == 1 and "cannot be greeted" in job["error"]
    await client.close()
    assert [e["name"] for e in read_log(tmp_path / "logs.txt") if e["event"] == "greeted"] == ["Ada"]


def test_example_plugin_copied_into_plugins_adds_a_task_type(services: Any, tmp_path: Path) -> None:
    """As a new user would: copy the package into a service's plugins/ and start it."""
    home = tmp_path / "home"
    shutil.copytree(ROOT / "plugins" / "example_hello", home / "plugins" / "example_hello",
                    ignore=shutil.ignore_patterns("__pycache__"))
    service: Service = services("home").wait_ready()
    status, answer = http("POST", f"{service.url}/enqueue", {"type": "hello", "payload": {"name": "Grace"}})
    assert status == 202, answer

    def result() -> Any:
        return http("GET", f"{service.url}/jobs/{answer['id']}")[1]["result"]

    assert wait_for(result, 10, "the hello job's result") == {"message": "Hello, Grace!", "attempt": 1}


def test_shipped_config_tables_are_accepted_by_their_plugins(builtins: Tasks, media: Path, tmp_path: Path) -> None:
    tables = load_config(str(ROOT / "config.toml"), {}, {}).plugins
    assert set(tables) == set(builtins)
    here = {"send_email": {"outbox": str(tmp_path / "outbox")}, "resize_image": {"media_dir": str(media)},
            "generate_pdf": {"media_dir": str(media)}, "hello": {}}
    payloads = {"send_email": {"to": "a@example.com", "subject": "s"},
                "resize_image": {"source": "photos/in.png", "new_x": 2, "new_y": 2},
                "generate_pdf": {"title": "t", "body": "b"}, "hello": {"name": "Ada"}}
    for name, payload in payloads.items():
        assert run(builtins, name, payload, make_ctx(name, **(dict(tables[name]) | here[name])))
