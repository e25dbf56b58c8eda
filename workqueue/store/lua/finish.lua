#!lua flags=allow-oom
-- Record the outcome of finished attempts and acknowledge their deliveries, in one step, so a
-- counter can never disagree with the job records.
-- KEYS[1] stats      the queue's counters
-- KEYS[2] scheduled  the queue's delayed jobs (retries wait there for their backoff)
-- KEYS[3] dead       the queue's dead set
-- KEYS[4] timings    the queue's window of recent attempt timings
-- ARGV[1] prefix     the queue's key prefix 'wq:{q}:'
-- ARGV[2] retention  JSON [result TTL ms, dead TTL ms, dead max, key TTL ms]
-- ARGV[3] window     how many recent timings to keep
-- ARGV[4] outcomes   one JSON array, each [job id, delivery (stream entry id), status, data,
--                    retry-at (epoch ms), task type, stream level, wait (ms, due to the real start),
--                    run (ms), both measured by the worker]; status is succeeded (data = result
--                    JSON), retrying, dead (data = error text) or cancelled
-- Returns per job a VERDICT: RECORDED, CANCELLED (the job had been cancelled meanwhile:
--   acknowledged, result discarded) or REFUSED (the delivery was no longer this worker's: the job
--   was recovered or handed to another worker meanwhile, so a stale holder's outcome is refused).
--   The job's `entry` and `level` fields are the fencing token: they name the one delivery (an
--   entry id is only unique within its stream) through which the job may be finished, and `entry`
--   is cleared when it is, so recording the same outcome twice (a retried call) counts it once.
-- Flags: allow-oom, on purpose: recording outcomes acknowledges and deletes stream entries and
-- lets records expire, which is what frees memory when Redis is full.
-- include: keys, clock, tally, bury, ended
local now = server_now()
local prefix = ARGV[1]
local r = retention(ARGV[2])
local out = {}
local timings = {}
local acks = {}  -- stream -> deliveries to acknowledge

for i, o in ipairs(cjson.decode(ARGV[4])) do
  local id, delivery, outcome, data, retry_at, task_type = o[1], o[2], o[3], o[4], o[5], o[6]
  local job, stream = job_key(prefix, id), stream_key(prefix, o[7])
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
    out[i] = VERDICT.REFUSED
  elseif f[2] == STATUS.CANCELLED or outcome == STATUS.CANCELLED then
    redis.call('HDEL', job, 'entry')
    if f[2] ~= STATUS.CANCELLED then
      redis.call('HSET', job, 'status', STATUS.CANCELLED, 'finished_at', now, 'error', data)
      ended(job, id, STATUS.CANCELLED, now, r.result_ttl, f[3], f[4], r)
    end  -- else the cancel request ended it already
    count(TALLY.CANCELLED)
    count_type(TALLY.CANCELLED, task_type)
    if f[2] == STATUS.CANCELLED then out[i] = VERDICT.CANCELLED else out[i] = VERDICT.RECORDED end
  else
    -- The worker measured wait and run ("type wait_ms run_ms" for the percentiles /metrics shows
    -- without Prometheus): a job fetched ahead starts later than its fetch. The record gets the
    -- real start, on this server's clock.
    local started = string.format('%.17g', now - o[9] / 1000)
    timings[#timings + 1] = string.format('%s %.1f %.1f', task_type, o[8], o[9])
    if outcome == STATUS.SUCCEEDED then
      redis.call('HSET', job, 'status', STATUS.SUCCEEDED, 'finished_at', now, 'started_at', started, 'result', data)
      redis.call('HDEL', job, 'entry', 'error')
      ended(job, id, STATUS.SUCCEEDED, now, r.result_ttl, f[3], f[4], r)
      count(TALLY.DONE)
      count_type(TALLY.SUCCEEDED, task_type)
    elseif outcome == STATUS.RETRYING then
      redis.call('HSET', job, 'status', STATUS.RETRYING, 'started_at', started, 'error', data, 'run_at', retry_at / 1000)
      redis.call('HDEL', job, 'entry')
      redis.call('ZADD', KEYS[2], retry_at, id)
      count(TALLY.RETRIED)
      count_type(TALLY.FAILED, task_type)
      count_type(TALLY.RETRIED, task_type)
    else
      bury(KEYS[3], job, id, task_type, now, data, f[3], f[4], r, 'started_at', started)
    end
    out[i] = VERDICT.RECORDED
  end
end
for stream, deliveries in pairs(acks) do
  for first = 1, #deliveries, 1000 do  -- unpack() of a very long list would overflow Lua's stack
    local last = math.min(first + 999, #deliveries)
    redis.call('XACK', stream, GROUP, unpack(deliveries, first, last))
    redis.call('XDEL', stream, unpack(deliveries, first, last))
  end
end
trim_dead(KEYS[3], prefix, now, r)
write_endings(prefix, now, r)
if #timings > 0 then
  for first = 1, #timings, 1000 do  -- unpack() of a very long list would overflow Lua's stack
    redis.call('RPUSH', KEYS[4], unpack(timings, first, math.min(first + 999, #timings)))
  end
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[3]), -1)
end
write_tally(KEYS[1])
return out
