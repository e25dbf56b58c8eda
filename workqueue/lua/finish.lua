-- Record the outcome of finished attempts and acknowledge their deliveries, in one step, so a
-- counter can never disagree with the job records.
-- KEYS[1] stats hash, KEYS[2] scheduled zset, KEYS[3] dead zset (job hashes and streams share
--   their hash tag: prefix..'job:'..id and prefix..'stream:'..level)
-- ARGV[1] consumer group, ARGV[2] result TTL (ms), ARGV[3] dead TTL (ms),
--   ARGV[4] dead-letter maximum size, ARGV[5] idempotency key TTL (ms), ARGV[6] the queue's key prefix 'wq:{q}:',
--   ARGV[7] how many recent timings to keep, ARGV[8] the outcomes as one JSON array, each
--   [job id, delivery (stream entry id), outcome, data, retry-at (epoch ms), task type, stream level,
--   wait (ms, due to the real start), run (ms), both measured by the worker];
--   outcome is 'succeeded' (data = result JSON), 'retry', 'dead' (data = error text) or 'cancelled'
-- Returns per job 1 if recorded, 2 if the job had been cancelled meanwhile (acknowledged, result
--   discarded), or 0 if the delivery was no longer this worker's (the job was recovered or handed to
--   another worker meanwhile): a stale holder's outcome is refused. The job's `entry` and `level`
--   fields are the fencing token: they name the one delivery (an entry id is only unique within
--   its stream) through which the job may be finished, and `entry` is cleared when it is, so
--   recording the same outcome twice (a retried call) counts it once.
local out = {}
-- Timestamps come from the Redis server's clock, so they are ordered whichever client wrote them.
local clock = redis.call('TIME')
local now = clock[1] + clock[2] / 1000000
local counts = {done = 0, failed = 0, retried = 0, cancelled = 0}
local by_type = {}  -- 'outcome|type' -> n, for the Prometheus counter of jobs by outcome
local timings = {}
local acks = {}  -- stream -> deliveries to acknowledge

local function count(outcome, task_type)
  local field = outcome .. '|' .. task_type
  by_type[field] = (by_type[field] or 0) + 1
end

-- A finished job's record expires after `ttl`; its idempotency key after its own TTL.
local function ended(job, f, ttl)
  redis.call('PEXPIRE', job, ttl)
  if f[3] then redis.call('PEXPIRE', f[3], f[4] or ARGV[5]) end
end

for i, o in ipairs(cjson.decode(ARGV[8])) do
  local id, delivery, outcome, data, retry_at, task_type = o[1], o[2], o[3], o[4], o[5], o[6]
  local job, stream = ARGV[6] .. 'job:' .. id, ARGV[6] .. 'stream:' .. o[7]
  -- Every delivery named here is acknowledged and deleted, in one XACK and one XDEL per stream
  -- after the loop: whatever its outcome, it carried this worker's attempt and nobody needs it.
  local deliveries = acks[stream]
  if not deliveries then deliveries = {}; acks[stream] = deliveries end
  deliveries[#deliveries + 1] = delivery
  -- One read per job for everything below: this runs once per job, every command counts.
  local f = redis.call('HMGET', job, 'entry', 'status', 'key', 'key_ttl', 'level')
  if f[1] ~= delivery or f[5] ~= tostring(o[7]) then
    -- The job is no longer held through this delivery: recovered by another worker (its entry
    -- names the new delivery), handed back, expired, or this outcome was recorded already.
    out[i] = 0
  elseif f[2] == 'cancelled' then
    redis.call('HDEL', job, 'entry')
    ended(job, f, ARGV[2])
    counts.cancelled = counts.cancelled + 1
    count('cancelled', task_type)
    out[i] = 2
  else
    -- The worker measured wait and run ("type wait_ms run_ms" for the percentiles /metrics shows
    -- without Prometheus): a job fetched ahead starts later than its fetch. The record gets the
    -- real start, on this server's clock.
    local started = string.format('%.17g', now - o[9] / 1000)
    if outcome ~= 'cancelled' then timings[#timings + 1] = string.format('%s %.1f %.1f', task_type, o[8], o[9]) end
    if outcome == 'succeeded' then
      redis.call('HSET', job, 'status', 'succeeded', 'finished_at', now, 'started_at', started, 'result', data)
      redis.call('HDEL', job, 'entry', 'error')
      ended(job, f, ARGV[2])
      counts.done = counts.done + 1
      count('succeeded', task_type)
    elseif outcome == 'retry' then
      redis.call('HSET', job, 'status', 'retrying', 'started_at', started, 'error', data, 'run_at', retry_at / 1000)
      redis.call('HDEL', job, 'entry')
      redis.call('ZADD', KEYS[2], retry_at, id)
      counts.retried = counts.retried + 1
      count('failed', task_type)
      count('retried', task_type)
    elseif outcome == 'cancelled' then
      redis.call('HSET', job, 'status', 'cancelled', 'finished_at', now, 'error', data)
      redis.call('HDEL', job, 'entry')
      ended(job, f, ARGV[2])
      counts.cancelled = counts.cancelled + 1
      count('cancelled', task_type)
    else
      redis.call('HSET', job, 'status', 'dead', 'finished_at', now, 'started_at', started, 'error', data)
      redis.call('HDEL', job, 'entry')
      ended(job, f, ARGV[3])
      -- Each death gets its own score, so paging through the dead set by score loses none.
      redis.call('ZADD', KEYS[3], now + counts.failed / 1000000, id)
      counts.failed = counts.failed + 1
      count('failed', task_type)
      count('dead', task_type)
    end
    out[i] = 1
  end
end
for stream, deliveries in pairs(acks) do
  for first = 1, #deliveries, 1000 do  -- unpack() of a very long list would overflow Lua's stack
    local last = math.min(first + 999, #deliveries)
    redis.call('XACK', stream, ARGV[1], unpack(deliveries, first, last))
    redis.call('XDEL', stream, unpack(deliveries, first, last))
  end
end
for field, n in pairs(by_type) do redis.call('HINCRBY', KEYS[1], field, n) end
if counts.failed > 0 then
  -- The dead-letter index forgets what has expired and keeps at most its maximum size (dropping
  -- the oldest), so it never outgrows the records it names.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[3]) / 1000)
  local excess = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[4])
  if excess > 0 then
    local popped = redis.call('ZPOPMIN', KEYS[3], excess)
    for j = 1, #popped, 2 do redis.call('DEL', ARGV[6] .. 'job:' .. popped[j]) end
  end
end
if #timings > 0 then
  local list = ARGV[6] .. 'timings'
  for first = 1, #timings, 1000 do  -- unpack() of a very long list would overflow Lua's stack
    redis.call('RPUSH', list, unpack(timings, first, math.min(first + 999, #timings)))
  end
  redis.call('LTRIM', list, -tonumber(ARGV[7]), -1)
end
for field, n in pairs(counts) do
  if n > 0 then redis.call('HINCRBY', KEYS[1], field, n) end
end
return out
