#!lua flags=allow-oom
-- Cancel a job. A waiting job (queued, scheduled or retrying) is taken off the queue at once. A
-- running job is marked cancelled and the queue's cancel counter is bumped; workers watch that
-- counter, and the one holding the job stops its handler and discards whatever it returns.
-- KEYS[1] job        the job's record
-- KEYS[2] scheduled  the queue's delayed jobs
-- KEYS[3] stats      the queue's counters
-- KEYS[4] cancels    the queue's counter of running jobs cancelled, which workers watch
-- ARGV[1] prefix     the queue's key prefix 'wq:{q}:'
-- ARGV[2] id         the job's id
-- ARGV[3] retention  JSON [result TTL ms, dead TTL ms, dead max, key TTL ms]
-- Returns {previous status, new status}; previous is false for an unknown job.
-- Flags: allow-oom, on purpose: a cancel mostly frees memory (the entry goes, the record expires).
-- include: keys, clock, tally, retention, ended
local job = KEYS[1]
local r = retention(ARGV[3])
local f = redis.call('HMGET', job, 'status', 'entry', 'level', 'key', 'key_ttl', 'type')
local status = f[1]
if not status then return {false, false} end
if status == STATUS.SUCCEEDED or status == STATUS.DEAD or status == STATUS.CANCELLED then return {status, status} end
if status == STATUS.QUEUED then
  if f[2] then redis.call('XDEL', stream_key(ARGV[1], f[3] or '0'), f[2]) end
else
  redis.call('ZREM', KEYS[2], ARGV[2])
end
local now = server_now()
redis.call('HSET', job, 'status', STATUS.CANCELLED, 'finished_at', now, 'error', 'cancelled on request')
-- Ended now, even if running: the holder stops it and its outcome is discarded.
ended(job, ARGV[2], STATUS.CANCELLED, now, r.result_ttl, f[4], f[5], r)
write_endings(ARGV[1], now, r)
if status == STATUS.ACTIVE then
  -- The holder counts it when it acknowledges (or the reaper, if the holder died).
  redis.call('INCR', KEYS[4])
else
  redis.call('HDEL', job, 'entry')
  count(TALLY.CANCELLED)
  count_type(TALLY.CANCELLED, f[6])
  write_tally(KEYS[3])
end
return {status, STATUS.CANCELLED}
