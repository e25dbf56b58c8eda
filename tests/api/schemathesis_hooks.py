"""schemathesis hooks for tests/api/test_openapi.py (loaded with SCHEMATHESIS_HOOKS).

GET /jobs/{id}?wait=N may hold a request for up to 60 s by design; generated waits are capped at
one second so that the run stays within its time budget. Invalid waits (not numbers, out of range)
are sent as generated.
"""

from typing import Any

import schemathesis


@schemathesis.hook
def map_query(ctx: Any, query: dict[str, Any] | None) -> dict[str, Any] | None:
    wait = (query or {}).get("wait")
    if isinstance(wait, (int, float)) and not isinstance(wait, bool) and 1 < wait <= 60:
        query = {**(query or {}), "wait": 1}
    return query
