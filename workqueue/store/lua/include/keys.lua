-- Key names inside a queue, from its prefix 'wq:{q}:' (the Python side: store/keys.py).
local function job_key(prefix, id) return prefix .. 'job:' .. id end
-- The stream of one priority level.
local function stream_key(prefix, level) return prefix .. 'stream:' .. level end
-- The history of the jobs that ended with `status` (a sorted set by time of the end).
local function history_key(prefix, status) return prefix .. 'history:' .. status end
-- A worker's heartbeat on this queue: while it exists, nobody takes that worker's jobs.
local function worker_key(prefix, name) return prefix .. 'worker:' .. name end
