"""The key schema: every Redis key workqueue uses is named here and nowhere else in Python (the Lua
scripts build the per-job and per-level names from a queue's prefix, in `lua/include/keys.lua`).

Per queue, all keys share the hash tag `{q}`, so every script stays in one Redis Cluster slot:

    wq:{q}:stream:<level>   Stream per priority level (0-9) of waiting and delivered job ids;
                            consumer group "workers"; an entry is deleted once its job is acked
    wq:{q}:job:<id>         Hash: the job record (type, payload, status, attempts, timestamps...)
    wq:{q}:scheduled        Sorted set: delayed jobs and retry backoffs, by due time (epoch ms)
    wq:{q}:dead             Sorted set: dead job ids, by time of death
    wq:{q}:stats            Hash: cluster-wide counters (enqueued, done, failed, retried, ...) and
                            per task type 'event|type' counters (succeeded, failed, dead, ...)
    wq:{q}:timings          List: "type wait_ms run_ms" of the most recent attempts (a window)
    wq:{q}:worker:<name>    String with a TTL of one lease: the heartbeat of a worker process
    wq:{q}:cancels          Counter bumped when a running job is cancelled; workers watch it
    wq:{q}:key:<digest>     String "<job id> <fingerprint>": an idempotency key and its job
    wq:{q}:schedule:<name>  String: the last tick a periodic schedule enqueued (epoch seconds)
    wq:{q}:history:<status> Sorted set: ids of jobs that ended succeeded or cancelled, by time of
                            the end (at most history_max, none older than result_ttl): GET /jobs
    wq:{q}:ended            Stream (capped): ids of jobs that just ended, which GET /jobs/{id}?wait
                            watches

plus two keys that belong to no queue, with a hash tag of their own that no queue name can have
(`:` is not allowed in one), so no queue's script ever touches them: `wq:{wq:registry}:queues`, the
set of queue names ever used, and `wq:{wq:registry}:workers`, a hash of worker name to its
description and last heartbeat (JSON), for GET /workers.
A job leaves its stream only when a worker acknowledges its outcome, so a crashed worker's jobs
stay pending under its name until another worker recovers them.
"""

from __future__ import annotations

import functools
import hashlib

GROUP = "workers"  # the consumer group of every level stream
LEVELS = 10  # priorities 0-9, one stream each
QUEUES_KEY = "wq:{wq:registry}:queues"
WORKERS_KEY = "wq:{wq:registry}:workers"


class QueueKeys:
    """The keys of one queue. Built once per queue name and kept (`keys_of`): hot paths only read."""

    __slots__ = ("cancels", "dead", "ended", "prefix", "queue", "scheduled", "stats", "streams", "timings")

    def __init__(self, queue: str) -> None:
        self.queue = queue
        self.prefix = f"wq:{{{queue}}}:"  # what the Lua scripts build the other names from
        self.stats = self.prefix + "stats"
        self.scheduled = self.prefix + "scheduled"
        self.dead = self.prefix + "dead"
        self.timings = self.prefix + "timings"
        self.cancels = self.prefix + "cancels"
        self.ended = self.prefix + "ended"
        self.streams = tuple(self.stream(level) for level in range(LEVELS))  # lowest level first

    def stream(self, level: int) -> str:
        return f"{self.prefix}stream:{level}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def history(self, status: str) -> str:
        return f"{self.prefix}history:{status}"

    def worker(self, name: str) -> str:
        return f"{self.prefix}worker:{name}"

    def idempotency(self, user_key: str) -> str:
        # Hashed so any client string makes a short, safe key name.
        return f"{self.prefix}key:{hashlib.sha256(user_key.encode()).hexdigest()[:40]}"

    def schedule(self, name: str) -> str:
        return f"{self.prefix}schedule:{name}"


@functools.lru_cache(maxsize=16384)  # queue names come from clients: bounded, not a growing dict
def keys_of(queue: str) -> QueueKeys:
    """The keys of `queue`, built once per name (hot paths only read them)."""
    return QueueKeys(queue)
