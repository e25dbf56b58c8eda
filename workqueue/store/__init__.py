"""The store: workqueue's one boundary with Redis.

    keys.py        the key schema: every key name, in one place
    scripts.py     the Lua scripts in lua/, each called through one typed wrapper
    connection.py  the connections (server or embedded), and redis-py errors -> StoreError
    queue.py       `Queue`: the verbs (enqueue, fetch, finish, recover, cancel, ...) over every queue
"""

from .connection import BLOCK_MS, Connections, connect
from .queue import Queue
from .scripts import Enqueued, Fetched, Retention

__all__ = ["BLOCK_MS", "Connections", "Enqueued", "Fetched", "Queue", "Retention", "connect"]
