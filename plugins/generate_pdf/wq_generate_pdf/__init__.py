"""The generate_pdf task type: render a title and paragraphs of text to a PDF with fpdf2.

Settings (`[plugins.generate_pdf]`): `media_dir`, the only directory jobs may write to
(default "media").

Text is set in DejaVu Sans, shipped in this package (fonts/, with its license), so Latin, Greek,
Cyrillic and many other scripts render, and can be searched and copied, on any machine without
system fonts. Characters the font lacks (CJK, for one) are shown as U+FFFD and listed in the
result. The handler is a plain function, so the worker runs it in a thread, off the event loop.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from importlib.resources import as_file, files
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import TTFFont

from workqueue import task
from workqueue.files import inside, write_atomic

__all__ = ["generate_pdf"]

FONT = "DejaVuSans"
FONT_FILES = {"": "DejaVuSans.ttf", "B": "DejaVuSans-Bold.ttf"}
REPLACEMENT = "\ufffd"

_PATH = {"type": "string", "minLength": 1, "maxLength": 4096}
SCHEMA = {
    "type": "object",
    "required": ["title", "body"],
    "additionalProperties": False,
    "properties": {
        "title": {"type": "string", "maxLength": 1000},
        "body": {"type": "string"},
        "dest": _PATH,
    },
}


class Context(Protocol):
    job_id: str
    settings: Mapping[str, Any]
    cancelled: threading.Event


def validate_payload(payload: Mapping[str, Any]) -> None:
    dest = payload.get("dest")
    if dest is not None:
        if "\0" in dest:
            raise ValueError("dest: contains a NUL character")
        if PurePosixPath(dest).suffix.lower() != ".pdf":
            raise ValueError(f"dest: {dest[-80:]!r} does not end in .pdf")


@task(schema=SCHEMA, validate=validate_payload, timeout=120)
def generate_pdf(payload: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """Write `title` and `body` to a PDF at `dest` and report how many pages it has.

    Payload: `title`, `body` (blank lines separate paragraphs; single line breaks inside a
    paragraph are wrapped like spaces), optional `dest` (a .pdf path inside the media directory;
    default `<job id>.pdf` there). Returns {"path": ..., "pages": n}, plus "missing_characters"
    when the font could not show some.
    """
    media_dir = read_settings(ctx.settings)
    dest = inside(media_dir, payload.get("dest", f"{ctx.job_id}.pdf"), "dest")

    pdf = FPDF()
    pdf.set_creator("workqueue generate_pdf")
    fonts = files(__name__).joinpath("fonts")
    for style, name in FONT_FILES.items():
        with as_file(fonts.joinpath(name)) as path:
            pdf.add_font(FONT, style=style, fname=path)
    font = pdf.fonts[FONT.lower()]
    assert isinstance(font, TTFFont)
    cmap = font.cmap
    missing: dict[str, None] = {}  # ordered set

    def shown(text: str) -> str:
        # fpdf2 drops characters the font lacks without a trace; show that something is missing.
        out = []
        for c in text:
            if ord(c) not in cmap and not c.isspace():
                missing[c] = None
                c = REPLACEMENT
            out.append(c)
        return "".join(out)

    title, body = payload["title"], payload["body"]
    pdf.set_title(title)
    pdf.add_page()
    if title.strip():
        pdf.set_font(FONT, style="B", size=18)
        pdf.multi_cell(0, 9, shown(" ".join(title.split())), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(4)
    pdf.set_font(FONT, size=11)
    for paragraph in re.split(r"\n\s*\n", body.strip()):
        text = " ".join(paragraph.split())
        if text:
            pdf.multi_cell(0, 6, shown(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.ln(3)
    data = bytes(pdf.output())

    if ctx.cancelled.is_set():
        # The worker gave up on this attempt (timeout, cancel, shutdown) and recorded its outcome;
        # writing now could race a retry that is already running.
        raise RuntimeError("attempt abandoned before its result was written")
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, data)
    result: dict[str, Any] = {"path": str(dest), "pages": pdf.pages_count}
    if missing:
        result["missing_characters"] = "".join(missing)
    return result



def read_settings(table: Mapping[str, Any]) -> Path:
    unknown = set(table) - {"media_dir"}
    if unknown:
        raise ValueError(f"[plugins.generate_pdf] {sorted(unknown)[0]}: unknown setting (expected media_dir)")
    media_dir = table.get("media_dir", "media")
    if not isinstance(media_dir, str) or not media_dir:
        raise ValueError(f"[plugins.generate_pdf] media_dir: expected a directory path (got {media_dir!r})")
    return Path(media_dir).resolve()
