"""The generate_pdf task type: render a title and paragraphs of text to a PDF with fpdf2.

Settings (`[plugins.generate_pdf]`): `media_dir`, the only directory jobs may write to.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from fpdf import FPDF
from fpdf.enums import XPos, YPos

__all__ = ["generate_pdf"]

FONT = "Helvetica"


class Context(Protocol):
    job_id: str
    settings: Mapping[str, Any]


def generate_pdf(payload: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """Write `title` and `body` to a PDF at `dest` and report how many pages it has.

    Payload: `title`, `body` (blank lines separate paragraphs), optional `dest` (inside the media
    directory; default `<job id>.pdf` there).
    """
    if not isinstance(payload, Mapping):
        raise ValueError("payload: expected an object with title and body")
    title = payload.get("title")
    if not isinstance(title, str):
        raise ValueError("payload.title: expected a string")
    body = payload.get("body")
    if not isinstance(body, str):
        raise ValueError("payload.body: expected a string")
    media_dir = Path(ctx.settings.get("media_dir", "media")).resolve()
    dest = _inside(media_dir, payload.get("dest", f"{ctx.job_id}.pdf"), "payload.dest")

    pdf = FPDF()
    pdf.set_title(_latin1(title))
    pdf.add_page()
    pdf.set_font(FONT, style="B", size=18)
    pdf.multi_cell(0, 9, _latin1(title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(4)
    pdf.set_font(FONT, size=11)
    for paragraph in re.split(r"\n\s*\n", body.strip()):
        # Single line breaks inside a paragraph are wrapping, as in Markdown.
        text = " ".join(paragraph.split())
        if text:
            pdf.multi_cell(0, 6, _latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
            pdf.ln(3)
    data = bytes(pdf.output())

    dest.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(dest, data)
    return {"path": str(dest), "pages": pdf.pages_count}


def _latin1(text: str) -> str:
    # The core PDF fonts only cover latin-1; until a Unicode font ships, show "?" rather than fail.
    return text.encode("latin-1", errors="replace").decode("latin-1")


def _inside(media_dir: Path, value: object, field: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: expected a path inside the media directory")
    # resolve() follows symlinks, so a link pointing out of the media directory is caught too.
    path = (media_dir / value).resolve()
    if not path.is_relative_to(media_dir):
        raise ValueError(f"{field}: resolves outside the media directory")
    return path


def _write_atomic(path: Path, data: bytes) -> None:
    # Temp file + rename: a reader never sees half a document, and a retry replaces it cleanly.
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
