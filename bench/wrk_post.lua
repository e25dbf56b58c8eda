-- wrk script: one job object per POST /enqueue, the same body the aiohttp load generator sends.
wrk.method = "POST"
wrk.body = '{"type": "noop", "payload": {"i": 1}}'
wrk.headers["Content-Type"] = "application/json"
