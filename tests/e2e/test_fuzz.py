"""Bad input (issue 7, point 8): at least 10,000 malformed requests against a producer.

Every answer must be a 4xx with a JSON `{"error": ...}` body: zero 5xx, zero crashes, and Redis
unchanged (not one key created or modified). The requests are generated from a fixed seed
(WORKQUEUE_FUZZ_SEED to vary it), so a failure is reproducible; every generator produces input
that is invalid by construction, never a request that should be accepted.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import io
import os
import random
import time
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import redis

from tests.conftest import Service, fixture_tasks, read_log
from tests.support import write_config

SEED = int(os.environ.get("WORKQUEUE_FUZZ_SEED", "7"))
TOTAL = 10_000
MAX_BODY = 1_048_576  # the default max_body_bytes
JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Bad:
    kind: str
    method: str
    path: str
    body: bytes | None
    headers: dict[str, str]


def valid_job(**fields: Any) -> dict[str, Any]:
    return {"type": "echo", "payload": {"n": 1}, **fields}


def post(kind: str, body: bytes, headers: dict[str, str] | None = None) -> Bad:
    return Bad(kind, "POST", "/enqueue", body, {**JSON, **(headers or {})})


def nested(depth: int) -> bytes:
    """A job whose payload nests `depth` levels (the body itself adds two)."""
    return b'{"type":"echo","payload":{"a":' + b"[" * depth + b"]" * depth + b"}}"


# Per field, values of a wrong type or out of range. None stands for JSON null.
WRONG: dict[str, list[Any]] = {
    "type": [None, 1, 1.5, True, [], {}, "", "no_such_type", "ECHO", " echo", "echo\u0000", "x" * 300],
    "payload": [None, 1, "text", True, [], [{}], 1.5],
    "retries": [None, "3", 3.5, -1, 1001, True, [], {}, 1e308, -0.5, 2**63],
    "queue": [None, 1, "", "bad name!", "a" * 65, "spaces here", "new\nline", [], {}, True, "ünïcode"],
    "timeout": [None, "1", 0, -1, True, [], {}, 1e308, 10**12],
    "priority": [None, -1, 10, 1.5, "1", True, [], {}],
    "delay": [None, -1, "5", True, [], {}, 1e12, -0.001],
    "run_at": [None, "yesterday", "2026-13-45T00:00:00Z", "2026-01-01T00:00:00", -1, True, [], {}, "", 1e15],
    "key": [1, "", "k" * 10_000, True, [], {}, 1.5],
}


@functools.cache
def bombs() -> tuple[bytes, bytes, bytes, bytes]:
    """100 MB of zeros gzipped (~450 KB), 50 MB of JSON string, the same zeros deflated, and 100 MB of
    blanks before a valid job: each inflates far past max_body_bytes."""
    zeros = b"\0" * (100 * 1024 * 1024)
    return (gzip.compress(zeros, 1),
            gzip.compress(b'{"type":"echo","payload":{"x":"' + b"a" * (50 * 1024 * 1024) + b'"}}', 1),
            zlib.compress(zeros, 1),
            gzip.compress(b" " * (100 * 1024 * 1024) + orjson.dumps(valid_job()), 1))


def deterministic_cases() -> list[Bad]:
    """Each listed category at least once, with the edges that matter."""
    cases: list[Bad] = []
    for name, values in WRONG.items():
        for value in values:
            cases.append(post(f"wrong type: {name}", orjson.dumps(valid_job(**{name: value}))))
            cases.append(post(f"wrong type in array: {name}",
                              orjson.dumps([valid_job(), valid_job(**{name: value})])))
    not_jobs = (b"1", b'"job"', b"null", b"true", b"[]", b"[1]", b"[[]]", b"{}",
                b'[{"type":"echo","payload":{}}, null]', b"[" + b"1," * 2000 + b"1]")
    cases += [post("not a job object", body) for body in not_jobs]
    cases += [post("unknown field", orjson.dumps(valid_job(**{k: 1}))) for k in ("Retries2", "payloads", "", "id",
                                                                               "status", "attempts", "x" * 1000)]
    cases += [post("field given twice (case)", b'{"type":"echo","Type":"echo","payload":{}}'),
              post("field given twice (case)", b'{"type":"echo","payload":{},"PAYLOAD":{}}'),
              post("both delay and run_at", orjson.dumps(valid_job(delay=1, run_at=time.time() + 10)))]
    cases += [
        post("duplicate keys", b'{"type":"echo","type":"echo","payload":{}}'),
        post("duplicate keys", b'{"type":"fail","payload":{},"type":"echo"}'),
        post("duplicate keys", b'{"type":"echo","payload":{"a":1},"payload":{"a":2}}'),
        post("duplicate keys", b'{"type":"echo","payload":{"to":"a@example.com","to":"b@example.com"}}'),
        post("duplicate keys", b'{"type":"echo","retries":1,"retries":2,"payload":{}}'),
    ]
    cases += [post("NaN/Infinity", body) for body in (
        b'{"type":"echo","payload":{"x":NaN}}', b'{"type":"echo","payload":{"x":Infinity}}',
        b'{"type":"echo","payload":{"x":-Infinity}}', b'{"type":"echo","retries":NaN,"payload":{}}',
        b'{"type":"echo","timeout":Infinity,"payload":{}}', b'{"type":"echo","delay":1e400,"payload":{}}',
        b'{"type":"echo","payload":{"x":-1e999}}', b"NaN", b"Infinity")]
    digits = b"9" * 100_000
    cases += [post("100,000-digit integer", body) for body in (
        digits, b'{"type":"echo","retries":' + digits + b',"payload":{}}',
        b'{"type":"echo","payload":{"n":' + digits + b"}}", b'{"type":"echo","payload":{"n":-' + digits + b"}}",
        b'{"type":"echo","priority":' + digits + b',"payload":{}}')]
    cases += [post(f"nesting depth {d}", nested(d)) for d in (63, 64, 100, 1000, 10_000, 100_000)]
    cases += [post("nesting depth 10,000 (body)", b"[" * 10_000 + b"]" * 10_000),
              post("nesting depth 10,000 (objects)", b'{"a":' * 10_000 + b"1" + b"}" * 10_000)]
    cases += [post("invalid UTF-8", body) for body in (
        b'{"type":"echo","payload":{"x":"\xff\xfe"}}', b'{"type":"ech\xc3","payload":{}}',
        b'{"type":"echo","payload":{"\xc0\xaf":1}}', b'{"type":"echo","payload":{"x":"\xed\xa0\x80"}}',
        b'{"type":"echo","payload":{"x":"\\ud800"}}', b'\xef\xbb\xbf{"type":"echo","payload":{}}',
        '{"type":"echo","payload":{}}'.encode("utf-16"), b'{"type":"echo","payload":{"x":"\xf8\x88\x80\x80\x80"}}')]
    cases += [post("syntax", body) for body in (
        b"", b" ", b"\n\t", b'{"type":"echo","payload":{},}', b"{'type':'echo','payload':{}}",
        b'{"type":"echo","payload":{}} x', b'{"type":"echo","payload":{}}\x00', b'{"type":"echo" "payload":{}}',
        b'{type:"echo",payload:{}}', b'{"type":"echo","payload":{}}{"type":"echo","payload":{}}')]
    # Huge strings: just under the body limit (refused by validation) and over it (413).
    for size in (MAX_BODY - 300, MAX_BODY - 160, MAX_BODY + 1, MAX_BODY * 3):
        filler = "a" * (size - 100 if size < MAX_BODY else size)  # the JSON around it is under 100 bytes
        cases += [post(f"huge string near/over the limit ({where})", orjson.dumps(job))
                  for where, job in (("type", {"type": filler, "payload": {}}),
                                     ("queue", valid_job(queue=filler)),
                                     ("key", valid_job(key=filler)),
                                     ("field name", {"type": "echo", "payload": {}, filler: 1}))]
        if size > MAX_BODY:  # a job that would be valid but for its size
            cases.append(post("huge string over the limit (payload)", orjson.dumps(valid_job(payload={"x": filler}))))
        else:  # a big payload under the limit, in a job wrong otherwise
            cases.append(post("huge string near the limit (payload, bad retries)",
                              orjson.dumps(valid_job(payload={"x": filler[:-40]}, retries=-1))))
    valid = orjson.dumps(valid_job())
    cases += [Bad("wrong content type", "POST", "/enqueue", valid, {"Content-Type": ct}) for ct in (
        "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml",
        "application/jsonx", "json", "text/json", "application/octet-stream", "image/png", "application/javascript")]
    bomb, json_bomb, deflate_bomb, blank_bomb = bombs()
    cases += [
        post("gzip bomb", bomb, {"Content-Encoding": "gzip"}),
        post("gzip bomb", json_bomb, {"Content-Encoding": "gzip"}),
        post("gzip bomb", deflate_bomb, {"Content-Encoding": "deflate"}),
        post("gzip bomb", blank_bomb, {"Content-Encoding": "gzip"}),
        post("gzip of malformed JSON", gzip.compress(b'{"type":"echo","payload":{}'), {"Content-Encoding": "gzip"}),
        post("invalid gzip data", b"this is not gzip", {"Content-Encoding": "gzip"}),
        post("invalid gzip data", bomb[: len(bomb) // 2], {"Content-Encoding": "gzip"}),
        post("unsupported Content-Encoding", valid, {"Content-Encoding": "br"}),
        post("unsupported Content-Encoding", valid, {"Content-Encoding": "zstd"}),
        post("unsupported Content-Encoding", valid, {"Content-Encoding": "x-unknown"}),
    ]
    cases += [post("bad Idempotency-Key header", orjson.dumps(body), {"Idempotency-Key": key}) for body, key in (
        (valid_job(), "k" * 1000), ([valid_job()], "k"), (valid_job(key="a"), "b"))]
    # The other endpoints, with malformed ids and query parameters (all read-only or refused).
    for path in ("/jobs/x", "/jobs/" + "f" * 32, "/jobs/" + "g" * 32, "/jobs/%00", "/jobs/" + "a" * 5000,
                 "/dead?limit=0", "/dead?limit=-1", "/dead?limit=abc", "/dead?limit=100000", "/dead?limit=1e3",
                 "/dead?cursor=abc", "/dead?cursor=nan", "/dead?cursor=NaN", "/dead?cursor=(1",
                 "/dead?queue=bad%20name", "/dead?queue=" + "q" * 100, "/dead?limit=%00"):
        cases.append(Bad("bad query or id", "GET", path, None, {}))
    for method, path in (("POST", "/jobs/x/cancel"), ("DELETE", "/jobs/" + "0" * 32), ("POST", "/dead/x/retry"),
                         ("POST", "/dead/" + "0" * 32 + "/retry"), ("DELETE", "/dead/x"),
                         ("POST", "/dead/retry?limit=0"), ("POST", "/dead/retry?limit=abc"),
                         ("POST", "/dead/retry?queue=bad%20name"), ("POST", "/dead/retry?cursor=nan&limit=nan"),
                         ("PUT", "/enqueue"), ("GET", "/enqueue"), ("PATCH", "/jobs/x"), ("POST", "/nowhere"),
                         ("POST", "/metrics"), ("DELETE", "/workers")):
        cases.append(Bad("bad method, path or id", method, path, b"{}", JSON))
    return cases


def random_case(rng: random.Random) -> Bad:
    """One more malformed request, drawn at random."""
    roll = rng.random()
    valid = orjson.dumps(valid_job(payload={"s": "x" * rng.randint(0, 50), "n": rng.randint(0, 10)}))
    if roll < 0.25:
        body = rng.randbytes(rng.randint(1, 3000))
        try:  # random bytes that happen to be valid JSON are not malformed: make them so
            orjson.loads(body)
            body += b"{"
        except orjson.JSONDecodeError:
            pass
        return post("random bytes", body)
    if roll < 0.45:
        cut = rng.randint(0, len(valid) - 1)
        return post("truncated JSON", valid[:cut] if cut else b" ")
    if roll < 0.60:
        name = rng.choice(list(WRONG))
        value = rng.choice(WRONG[name])
        job = valid_job(**{name: value})
        if rng.random() < 0.3:
            return post(f"wrong type in array: {name}", orjson.dumps([valid_job()] * rng.randint(0, 5) + [job]))
        return post(f"wrong type: {name}", orjson.dumps(job))
    if roll < 0.70:  # one byte of a valid job flipped to something that breaks it
        i = rng.randrange(len(valid))
        body = valid[:i] + bytes([rng.choice(b"\xff\x00{}[]:,\"\\")]) + valid[i + 1:]
        try:
            decoded = orjson.loads(body)
            still_valid = isinstance(decoded, dict) and decoded.get("type") == "echo" \
                and isinstance(decoded.get("payload"), dict) and set(decoded) <= {"type", "payload"}
            if still_valid:
                body = body[:-1]  # still a valid job: truncate it instead
        except orjson.JSONDecodeError:
            pass
        return post("flipped byte", body)
    if roll < 0.78:
        depth = rng.choice([65, 70, 100, 500, 1025, 5000, 10_000])
        return post(f"nesting depth {depth}", nested(depth))
    if roll < 0.86:
        ct = rng.choice(["text/plain", "application/xml", "text/html; charset=utf-8",
                         "application/x-www-form-urlencoded",
                         "multipart/form-data; boundary=zz", "application/jsonp", "*/*", "application/json-seq"])
        return Bad("wrong content type", "POST", "/enqueue", valid, {"Content-Type": ct})
    if roll < 0.93:
        inner = valid.decode()
        where = rng.choice(['"n":', '"retries":', '"priority":'])
        literal = rng.choice(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "9" * rng.randint(400, 5000)])
        body = ('{"type":"echo",' + where + literal + ',"payload":{}}') if where != '"n":' else \
            inner.replace('"n":', '"n":' + literal + ',"m":', 1)
        return post("NaN/Infinity/huge number", body.encode())
    name = rng.choice(list(WRONG))
    job = valid_job(**{name: rng.choice(WRONG[name])})
    return post("invalid UTF-8 in a wrong job", orjson.dumps(job)[:-1] + b',"z":"\xff"}')


def all_cases() -> list[Bad]:
    rng = random.Random(SEED)
    cases = deterministic_cases()
    while len(cases) < TOTAL:
        cases.append(random_case(rng))
    return cases


def redis_snapshot(url: str) -> dict[bytes, Any]:
    """Every key with its type and content, to prove nothing was written."""
    with redis.Redis.from_url(url) as r:
        out: dict[bytes, Any] = {}
        for key in r.scan_iter(count=1000):
            kind = r.type(key).decode()
            value = {"string": r.get, "hash": r.hgetall, "set": r.smembers, "list": lambda k: r.lrange(k, 0, -1),
                     "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
                     "stream": lambda k: r.xrange(k)}.get(kind, lambda k: None)(key)
            out[key] = (kind, value)
        return out


Result = tuple[Bad, int, Any, str]  # the case, the status (0: no answer), the body, the Content-Type


async def send_all(session: aiohttp.ClientSession, base: str, cases: list[Bad], concurrency: int = 32) -> list[Result]:
    gate = asyncio.Semaphore(concurrency)
    results: list[Result] = []

    async def one(case: Bad) -> None:
        async with gate:
            for attempt in (1, 2):
                try:
                    # Large bodies go as a stream (aiohttp warns about big raw bytes).
                    data = io.BytesIO(case.body) if case.body is not None and len(case.body) > 65536 else case.body
                    async with session.request(case.method, base + case.path, data=data, headers=case.headers) as r:
                        raw = await r.read()
                        try:
                            body = orjson.loads(raw)
                        except orjson.JSONDecodeError:
                            body = raw[:200].decode(errors="replace")
                        results.append((case, r.status, body, r.headers.get("Content-Type", "")))
                        return
                except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as e:
                    # After refusing a body it did not read, the server closes that connection; a
                    # client that reused it tries once more on a new one.
                    if attempt == 2:
                        results.append((case, 0, f"{type(e).__name__}: {e}", ""))
                except Exception as e:  # no HTTP answer at all
                    results.append((case, 0, f"{type(e).__name__}: {e}", ""))
                    return

    await asyncio.gather(*(one(c) for c in cases))
    return results


def failures_of(results: list[Result]) -> dict[str, list[str]]:
    """Category -> what went wrong, for every answer that is not a 4xx JSON error."""
    failures: dict[str, list[str]] = {}
    for case, status, body, content_type in results:
        wrong = None
        if not 400 <= status < 500:
            wrong = f"status {status}"
        elif not content_type.startswith("application/json"):
            wrong = f"{status} with Content-Type {content_type!r}"
        elif not (isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]):
            wrong = f"{status} without an error message"
        if wrong:
            failures.setdefault(case.kind, []).append(f"{case.method} {case.path[:60]}: {wrong}: {str(body)[:120]}")
    return failures


@pytest.mark.timeout(180)
async def test_ten_thousand_malformed_requests_get_4xx_json_errors_and_change_nothing(
    make_client: Any, make_settings: Any, redis_url: str
) -> None:
    client = await make_client(make_settings(redis_url=redis_url, role="producer", max_body_bytes=MAX_BODY),
                               fixture_tasks())
    # A valid job first, so the queue exists and the snapshot holds real keys to compare.
    first = await client.post("/enqueue", json=valid_job())
    assert first.status == 202
    before = redis_snapshot(redis_url)
    cases = all_cases()
    assert len(cases) >= TOTAL
    began = time.monotonic()
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        results = await send_all(session, str(client.make_url("")), cases)
    elapsed = time.monotonic() - began
    assert len(results) == len(cases)
    statuses = Counter(status for _, status, _, _ in results)
    print(f"\nfuzz: {len(results)} requests in {elapsed:.1f} s (seed {SEED}): "
          f"statuses {dict(sorted(statuses.items()))}")
    failures = failures_of(results)
    after = redis_snapshot(redis_url)
    changed = sorted({*before, *after} - {k for k in before if before.get(k) == after.get(k)})
    assert not failures, "answers that are not a 4xx JSON error, by category: " + "; ".join(
        f"{kind} ({len(found)}x): {' | '.join(found[:3])}" for kind, found in sorted(failures.items()))
    assert not changed, f"Redis keys created or modified by malformed requests: {changed[:10]}"
    assert sum(statuses.values()) >= TOTAL and all(400 <= s < 500 for s in statuses)


@pytest.mark.timeout(120)
def test_bombs_and_deep_nesting_against_a_real_producer_process(
    services: Any, redis_url: str, tmp_path: Path
) -> None:
    """The cases that could exhaust memory or the stack, against `python -m workqueue`: it stays up,
    answers each with a 4xx, and its peak memory stays bounded."""
    import urllib.error
    import urllib.request

    config = write_config(tmp_path / "cfg", redis_url)
    producer: Service = services("producer", "--role", "producer", "--config", str(config)).wait_ready()
    cases = [c for c in deterministic_cases() if c.kind.startswith(("gzip bomb", "nesting depth", "100,000-digit",
                                                                     "huge string"))]
    cases = cases * 3
    answers = []
    for case in cases:
        request = urllib.request.Request(producer.url + case.path, data=case.body, method=case.method,
                                         headers=case.headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                answers.append((case.kind, r.status))
        except urllib.error.HTTPError as e:
            answers.append((case.kind, e.code))
        except OSError as e:
            answers.append((case.kind, f"no answer: {e}"))
    with open(f"/proc/{producer.process.pid}/status") as status:
        peak_kb = int(next(line.split()[1] for line in status if line.startswith("VmHWM")))
    print(f"\nproducer peak RSS after {len(cases)} bombs: {peak_kb / 1024:.0f} MiB")
    assert producer.process.poll() is None, producer.read_stderr()
    assert all(isinstance(s, int) and 400 <= s < 500 for _, s in answers), [a for a in answers if a[1] not in
                                                                          range(400, 500)]
    assert peak_kb < 400 * 1024, f"peak RSS {peak_kb / 1024:.0f} MiB"
    producer.signal(15)
    assert producer.wait(15) == 0
    assert not [e for e in read_log(producer.log_path) if e["event"] == "http_error"]
