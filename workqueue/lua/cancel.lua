-- Cancel a job. A waiting job (queued, scheduled or retrying) is taken off the queue at once. A
-- running job is marked cancelled and the queue's cancel counter is bumped; workers watch that
-- counter, and the one holding the job stops its handler and discards whatever it returns.
-- KEYS[1] job hash, KEYS[2] scheduled zset, KEYS[3] stats hash
-- ARGV[1] result TTL (ms), ARGV[2] idempotency key TTL (ms),
--   ARGV[3] the queue's key prefix 'wq:{q}:', ARGV[4] job id
-- Returns {previous status, new status}; previous is false for an unknown job.
-- Timestamps come from the Redis server's clock, so they are ordered whichever client wrote them.
local clock = redis.call('TIME')
local now = clock[1] + clock[2] / 1000000
local job = KEYS[1]
local status = redis.call('HGET', job, 'status')
if not status then return {false, false} end
if status == 'succeeded' or status == 'dead' or status == 'cancelled' then return {status, status} end
if status == 'queued' then
  local entry = redis.call('HGET', job, 'entry')
  local level = redis.call('HGET', job, 'level') or '0'
  if entry then redis.call('XDEL', ARGV[3] .. 'stream:' .. level, entry) end
else
  redis.call('ZREM', KEYS[2], ARGV[4])
end
redis.call('HSET', job, 'status', 'cancelled', 'finished_at', now, 'error', 'cancelled on request')
redis.call('PEXPIRE', job, ARGV[1])
local idem = redis.call('HGET', job, 'key')
if idem then redis.call('PEXPIRE', idem, redis.call('HGET', job, 'key_ttl') or ARGV[2]) end
if status == 'active' then
  -- The holder counts it when it acknowledges (or the reaper, if the holder died).
  redis.call('INCR', ARGV[3] .. 'cancels')
else
  redis.call('HDEL', job, 'entry')
  redis.call('HINCRBY', KEYS[3], 'cancelled', 1)
  redis.call('HINCRBY', KEYS[3], 'cancelled|' .. redis.call('HGET', job, 'type'), 1)
end
return {status, 'cancelled'}
