"""Reading a request body: content type, size, encoding, JSON, nesting depth and duplicate keys,
all checked before anything of ours looks at the data.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from ..errors import ValidationError

JSON_TYPES = ("application/json",)
MAX_DEPTH = 64  # JSON nesting a request may have; payloads, schemas and scripts all handle it
KEY_MARK = re.compile(rb'"\s*:')


async def read_json(request: web.Request, limit: int) -> Any:
    """The decoded body, after the checks that need no parsing: content type, then size."""
    given = request.content_type
    if "Content-Type" in request.headers and given not in JSON_TYPES and not given.endswith("+json"):
        raise ValidationError(f"Content-Type: expected application/json (got {request.content_type})", 415)
    if request.content_length is not None and request.content_length > limit:
        raise ValidationError(f"body: larger than the limit of {limit} bytes", 413)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise ValidationError(f"Content-Encoding: expected identity, gzip or deflate (got {encoding[:40]!r})", 415)
    try:
        # aiohttp enforces client_max_size (= limit) while reading, chunked bodies too.
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ValidationError(f"body: larger than the limit of {limit} bytes", 413) from None
    except RequestPayloadError as e:
        raise ValidationError(f"body: could not be read as sent ({e})", 400) from e
    if encoding != "identity":
        body = decompress(body, limit)
    if not body.strip():
        raise ValidationError("body: empty; expected a JSON job object or an array of them", 400)
    try:
        decoded = orjson.loads(body)  # C code with its own nesting limit: nothing of ours recurses yet
    except orjson.JSONDecodeError as e:
        raise ValidationError(f"body: invalid JSON ({e})", 400) from e
    deep, keys, huge = shape(decoded, MAX_DEPTH)
    if deep:
        raise ValidationError(f"body: JSON nested deeper than {MAX_DEPTH} levels", 400)
    if has_duplicate_keys(body, keys):
        raise ValidationError("body: an object repeats a key; each key may appear once", 400)
    if huge:
        where = oversized_integer(body)
        if where is not None:
            raise ValidationError(f"{where}: an integer outside the signed 64-bit range (-2^63 to 2^63-1); "
                                  "send it as a string to keep every digit", 422)
    return decoded


def decompress(body: bytes, limit: int) -> bytes:
    """A gzip or deflate body, inflated by us (the server's automatic decoding is off) and never
    past `limit` bytes, so a compression bomb costs a bounded amount of memory."""
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # 32: gzip or zlib header, detected
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise ValidationError(f"body: not valid gzip or deflate data ({e})", 400) from e
    if len(data) > limit or inflater.unconsumed_tail:
        raise ValidationError(f"body: larger than the limit of {limit} bytes once decompressed", 413)
    return data


def shape(value: Any, limit: int) -> tuple[bool, int, bool]:
    """(nests deeper than `limit`?, number of object keys, may hold an integer beyond 64 bits?);
    iterative, so a hostile body cannot make anything recurse. orjson reads integers up to 2^64-1
    exactly and larger ones as floats, silently: an integral float that large may have been one."""
    keys, huge = 0, False
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True, keys, huge
            if isinstance(item, dict):
                keys += len(item)
                stack.extend((child, depth + 1) for child in item.values())
            else:
                stack.extend((child, depth + 1) for child in item)
        elif isinstance(item, int) and not isinstance(item, bool):
            huge = huge or not INT64_MIN <= item <= INT64_MAX
        elif isinstance(item, float):
            huge = huge or (abs(item) >= 2.0**63 and item.is_integer())
    return False, keys, huge


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class Oversized(int):
    """An integer literal beyond 64 bits, marked while the body is read again to find it."""


def oversized_integer(body: bytes) -> str | None:
    """Where the first integer literal outside the signed 64-bit range is (`[1].payload.n`), or
    None (the large number was written as a float, 1e20). Only called when `shape` saw one."""

    def parse_int(literal: str) -> int:
        value = int(literal)
        return Oversized(value) if not INT64_MIN <= value <= INT64_MAX else value

    stack: list[tuple[Any, str]] = [(json.loads(body, parse_int=parse_int), "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, Oversized):
            return where.lstrip(".") or "body"
        if isinstance(item, dict):
            stack.extend((v, f"{where}.{k}") for k, v in reversed(item.items()))
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in reversed(list(enumerate(item))))
    return None


def has_duplicate_keys(body: bytes, keys_decoded: int) -> bool:
    """Whether an object in the body repeats a key. orjson keeps the last of duplicates silently,
    and parsers disagreeing about which one counts is how smuggled fields happen. A key is a
    string followed by a colon; when the body has no more of those than orjson kept keys, there
    is no duplicate. Only otherwise (a duplicate, or a string value holding '\\":') does the
    slower exact check run."""
    if len(KEY_MARK.findall(body)) <= keys_decoded:
        return False

    def refuse_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        found = dict(pairs)
        if len(found) != len(pairs):
            raise DuplicateKey
        return found

    try:
        json.loads(body, object_pairs_hook=refuse_repeats)
    except DuplicateKey:
        return True
    return False


class DuplicateKey(Exception):
    pass
