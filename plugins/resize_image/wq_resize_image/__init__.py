"""The resize_image task type: resize an image inside the media directory with Pillow.

Settings (`[plugins.resize_image]`): `media_dir`, the only directory jobs may read from or write to.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, UnidentifiedImageError

__all__ = ["resize_image"]


class Context(Protocol):
    settings: Mapping[str, Any]


def resize_image(payload: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """Resize `source` to `new_x` by `new_y` pixels and save it to `dest`.

    Payload: `source` (relative to the media directory, or absolute inside it), `new_x`, `new_y`
    (positive integers), optional `dest` (default `<stem>_<x>x<y><suffix>` next to the source).
    """
    if not isinstance(payload, Mapping):
        raise ValueError("payload: expected an object with source, new_x and new_y")
    media_dir = Path(ctx.settings.get("media_dir", "media")).resolve()
    source = _inside(media_dir, payload.get("source"), "payload.source")
    width = _positive_int(payload.get("new_x"), "payload.new_x")
    height = _positive_int(payload.get("new_y"), "payload.new_y")
    # The same bound Pillow puts on decoding, so one payload cannot ask for gigabytes of memory.
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise ValueError(
            f"payload.new_x: {width}x{height} is more than {Image.MAX_IMAGE_PIXELS} pixels"
        )
    if payload.get("dest") is None:
        dest = source.with_name(f"{source.stem}_{width}x{height}{source.suffix}")
    else:
        dest = _inside(media_dir, payload["dest"], "payload.dest")
    image_format = Image.registered_extensions().get(dest.suffix.lower())
    if image_format is None:
        raise ValueError(
            f"payload.dest: {dest.suffix or 'no suffix'} is not an image format Pillow can write"
        )

    try:
        with Image.open(source) as image:
            resized = image.resize((width, height), Image.Resampling.LANCZOS)
    except FileNotFoundError as e:
        raise ValueError(f"payload.source: no such file {source}") from e
    except UnidentifiedImageError as e:
        raise ValueError(f"payload.source: {source} is not an image Pillow can read") from e
    if image_format == "JPEG" and resized.mode not in ("RGB", "L", "CMYK"):
        resized = resized.convert("RGB")  # JPEG has no alpha channel or palette
    buffer = io.BytesIO()
    resized.save(buffer, format=image_format)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(dest, buffer.getvalue())
    return {"path": str(dest), "width": width, "height": height}


def _inside(media_dir: Path, value: object, field: str) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: expected a path inside the media directory")
    # resolve() follows symlinks, so a link pointing out of the media directory is caught too.
    path = (media_dir / value).resolve()
    if not path.is_relative_to(media_dir):
        raise ValueError(f"{field}: resolves outside the media directory")
    return path


def _positive_int(value: object, field: str) -> int:
    # bool is an int subclass, but `true` in a payload is a mistake, not a size of 1.
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{field}: expected a positive integer, got {value!r}")
    return value


def _write_atomic(path: Path, data: bytes) -> None:
    # Temp file + rename: a reader never sees half an image, and a retry replaces it cleanly.
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
