-- Record the outcome of finished attempts and acknowledge their deliveries, in one step, so a
-- counter can never disagree with the job records.
-- KEYS[1] stream, KEYS[2] stats hash, KEYS[3] scheduled zset, KEYS[4] dead zset,
--   KEYS[5..] one job hash per outcome
-- ARGV[1] consumer group, ARGV[2] now (epoch seconds), ARGV[3] result TTL (ms), ARGV[4] dead TTL (ms),
--   then per job 5 values: job id, delivery (stream entry id), outcome, data, retry-at (epoch ms)
--   outcome is 'succeeded' (data = result JSON), 'retry' or 'dead' (data = error text)
-- Returns per job 1 if recorded, or 0 if the delivery was no longer ours (the job was recovered or
--   handed to another worker meanwhile): a stale holder's outcome is refused.
local out = {}
local now = tonumber(ARGV[2])
local done, failed, retried = 0, 0, 0
for i = 5, #KEYS do
  local a = 4 + (i - 5) * 5
  local id, delivery, outcome, data = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local job = KEYS[i]
  if redis.call('XACK', KEYS[1], ARGV[1], delivery) == 0
      or redis.call('HGET', job, 'delivery') ~= delivery then
    out[#out + 1] = 0
  else
    redis.call('XDEL', KEYS[1], delivery)
    if outcome == 'succeeded' then
      redis.call('HSET', job, 'status', 'succeeded', 'finished_at', ARGV[2], 'result', data)
      redis.call('HDEL', job, 'delivery', 'error')
      redis.call('PEXPIRE', job, ARGV[3])
      done = done + 1
    elseif outcome == 'retry' then
      redis.call('HSET', job, 'status', 'retrying', 'error', data)
      redis.call('HDEL', job, 'delivery')
      redis.call('ZADD', KEYS[3], ARGV[a + 5], id)
      retried = retried + 1
    else
      redis.call('HSET', job, 'status', 'dead', 'finished_at', ARGV[2], 'error', data)
      redis.call('HDEL', job, 'delivery')
      redis.call('PEXPIRE', job, ARGV[4])
      redis.call('ZADD', KEYS[4], now, id)
      failed = failed + 1
    end
    out[#out + 1] = 1
  end
end
if failed > 0 then
  -- The dead-letter index forgets what has expired, so it never outgrows the records it names.
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - tonumber(ARGV[4]) / 1000)
end
if done > 0 then redis.call('HINCRBY', KEYS[2], 'done', done) end
if failed > 0 then redis.call('HINCRBY', KEYS[2], 'failed', failed) end
if retried > 0 then redis.call('HINCRBY', KEYS[2], 'retried', retried) end
return out
