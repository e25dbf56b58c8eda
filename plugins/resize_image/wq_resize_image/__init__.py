"""The resize_image task type: resize an image inside the media directory with Pillow.

Settings (`[plugins.resize_image]`), all optional:

    media_dir   the only directory jobs may read from or write to (default "media")
    max_side    the largest new_x or new_y a job may ask for (default 10000)
    max_pixels  the largest source or result, in pixels (default 50000000)

Paths in a payload are relative to the media directory, or absolute inside it. One that resolves
outside it (through "..", an absolute path elsewhere or a symbolic link) is refused before any
file is opened. Refusals and unreadable sources raise PermanentError: a retry cannot help them.
The handler is a plain function, so the worker runs it in a thread, off the event loop.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from PIL import Image, ImageOps, UnidentifiedImageError

from workqueue import PermanentError, task
from workqueue.files import inside, write_atomic

__all__ = ["resize_image"]

# What a job may ask for: format name -> (Pillow's name, file extensions, the first the default).
FORMATS = {
    "png": ("PNG", (".png",)),
    "jpeg": ("JPEG", (".jpg", ".jpeg")),
    "webp": ("WEBP", (".webp",)),
    "gif": ("GIF", (".gif",)),
}
# What a job may read: the common formats, not every decoder Pillow carries.
READABLE = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
# The schema's ceiling on a side; the configured max_side is checked when the job runs.
LARGEST_SIDE = 65535

_PATH = {"type": "string", "minLength": 1, "maxLength": 4096}
_SIDE = {"type": "integer", "minimum": 1, "maximum": LARGEST_SIDE}
SCHEMA = {
    "type": "object",
    "required": ["source", "new_x", "new_y"],
    "additionalProperties": False,
    "properties": {
        "source": _PATH,
        "new_x": _SIDE,
        "new_y": _SIDE,
        "dest": _PATH,
        "format": {"enum": list(FORMATS)},
    },
}


class Context(Protocol):
    settings: Mapping[str, Any]
    cancelled: threading.Event


def validate_payload(payload: Mapping[str, Any]) -> None:
    """What the schema cannot say: no NUL in a path, and `dest` ends as `format` says."""
    for name in ("source", "dest"):
        if "\0" in payload.get(name, ""):
            raise ValueError(f"{name}: contains a NUL character")
    if "dest" in payload:
        output_format(payload["dest"], payload.get("format"))


@task(schema=SCHEMA, validate=validate_payload, timeout=120)
def resize_image(payload: Mapping[str, Any], ctx: Context) -> dict[str, Any]:
    """Resize `source` to exactly `new_x` by `new_y` pixels and save it to `dest`.

    Payload: `source`, `new_x`, `new_y`, optional `format` (png, jpeg, webp or gif) and `dest`
    (default `<stem>_<x>x<y>.<ext>` next to the source; its extension must match `format`).
    Without either, the result has the source's format if it is one of those four, else PNG.
    An animated GIF or WebP gives its first frame.
    Returns {"path": the absolute path written, "width": new_x, "height": new_y}.
    """
    media_dir, max_side, max_pixels = read_settings(ctx.settings)
    source = inside(media_dir, payload["source"], "source")
    # JSON Schema counts 20.0 as an integer; Pillow and the result want 20.
    width, height = int(payload["new_x"]), int(payload["new_y"])
    for name, side in (("new_x", width), ("new_y", height)):
        if side > max_side:
            raise PermanentError(f"payload.{name}: {side} is more than the configured maximum of "
                                 f"{max_side} ([plugins.resize_image] max_side)")
    if width * height > max_pixels:
        raise PermanentError(f"payload.new_x: {width}x{height} is more than the configured maximum of "
                             f"{max_pixels} pixels ([plugins.resize_image] max_pixels)")
    dest = inside(media_dir, payload["dest"], "dest") if "dest" in payload else None

    if not source.is_file():
        raise PermanentError(f"payload.source: no such file in the media directory: {payload['source']!r}")
    try:
        with Image.open(source, formats=READABLE) as image:
            if image.width * image.height > max_pixels:
                raise PermanentError(f"payload.source: {image.width}x{image.height} is more than the "
                                     f"configured maximum of {max_pixels} pixels")
            image_format = payload.get("format") or next(
                (name for name, (pillow, _) in FORMATS.items() if pillow == image.format), "png")
            if dest is None:
                suffix = source.suffix if source.suffix.lower() in FORMATS[image_format][1] \
                    else FORMATS[image_format][1][0]
                dest = source.with_name(f"{source.stem}_{width}x{height}{suffix}")
            else:
                image_format = output_format(payload["dest"], payload.get("format"))
            # A photo taken sideways is stored sideways with an orientation tag: new_x and new_y
            # mean the picture as it is shown.
            upright = ImageOps.exif_transpose(image)
            resized = upright.resize((width, height), Image.Resampling.LANCZOS)
    except (UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise PermanentError(f"payload.source: not an image this service reads "
                             f"({', '.join(READABLE)}): {e}") from e
    except OSError as e:  # truncated or corrupt data, or a file the worker may not read
        raise PermanentError(f"payload.source: cannot read the image: {e}") from e
    data = encode(resized, FORMATS[image_format][0])
    if ctx.cancelled.is_set():
        # The worker gave up on this attempt (timeout, cancel, shutdown) and recorded its outcome;
        # writing now could race a retry that is already running.
        raise RuntimeError("attempt abandoned before its result was written")
    dest.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(dest, data)
    return {"path": str(dest), "width": width, "height": height}


def output_format(dest: str, requested: str | None) -> str:
    """The format `dest` names by its extension, which must agree with `requested` if given."""
    suffix = PurePosixPath(dest).suffix.lower()
    named = next((name for name, (_, suffixes) in FORMATS.items() if suffix in suffixes), None)
    if named is None:
        expected = ", ".join(s for _, suffixes in FORMATS.values() for s in suffixes)
        raise ValueError(f"dest: {dest[-80:]!r} does not end in an image extension ({expected})")
    if requested is not None and requested != named:
        raise ValueError(f"dest: the extension {suffix} does not match format {requested!r}")
    return named


def encode(image: Image.Image, pillow_format: str) -> bytes:
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    if pillow_format == "JPEG" and image.mode not in ("RGB", "L"):
        # JPEG has no alpha: lay the picture on white rather than let transparency turn black.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, "white")
        background.paste(rgba, mask=rgba.getchannel("A"))
        image = background
    elif pillow_format in ("PNG", "WEBP") and image.mode not in ("RGB", "RGBA", "L", "LA", "P", "1"):
        image = image.convert("RGBA" if has_alpha else "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=pillow_format)
    return buffer.getvalue()



def read_settings(table: Mapping[str, Any]) -> tuple[Path, int, int]:
    where = "[plugins.resize_image]"
    unknown = set(table) - {"media_dir", "max_side", "max_pixels"}
    if unknown:
        raise ValueError(f"{where} {sorted(unknown)[0]}: unknown setting "
                         "(expected media_dir, max_side, max_pixels)")
    media_dir = table.get("media_dir", "media")
    if not isinstance(media_dir, str) or not media_dir:
        raise ValueError(f"{where} media_dir: expected a directory path (got {media_dir!r})")
    limits = []
    for key, default in (("max_side", 10000), ("max_pixels", 50_000_000)):
        value = table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{where} {key}: expected a positive integer (got {value!r})")
        limits.append(value)
    return Path(media_dir).resolve(), limits[0], limits[1]
