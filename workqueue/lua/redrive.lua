-- Send dead jobs back to their queue for a fresh set of attempts.
-- KEYS[1] dead zset, KEYS[2] stats hash
-- ARGV[1] the queue's key prefix 'wq:{q}:', ARGV[2..] job ids
-- Returns the ids re-driven (ids no longer in the dead set are skipped).
-- Timestamps come from the Redis server's clock, so they are ordered whichever client wrote them.
local clock = redis.call('TIME')
local now = clock[1] + clock[2] / 1000000
local out = {}
for i = 2, #ARGV do
  local id = ARGV[i]
  local job = ARGV[1] .. 'job:' .. id
  if redis.call('ZREM', KEYS[1], id) == 1 and redis.call('HGET', job, 'status') == 'dead' then
    local level = redis.call('HGET', job, 'priority') or '0'
    local entry = redis.call('XADD', ARGV[1] .. 'stream:' .. level, '*', 'id', id)
    redis.call('HSET', job, 'status', 'queued', 'attempts', 0, 'entry', entry, 'level', level,
      'redriven_at', now)
    redis.call('HDEL', job, 'finished_at', 'started_at', 'run_at')
    redis.call('PERSIST', job)
    local idem = redis.call('HGET', job, 'key')
    if idem then redis.call('PERSIST', idem) end
    out[#out + 1] = id
  end
end
if #out > 0 then redis.call('HINCRBY', KEYS[2], 'redriven', #out) end
return out
