#!lua
-- Send dead jobs back to their queue for a fresh set of attempts.
-- KEYS[1] dead    the queue's dead set
-- KEYS[2] stats   the queue's counters
-- ARGV[1] prefix  the queue's key prefix 'wq:{q}:'
-- ARGV[2] ids     JSON array of the job ids
-- Returns the ids re-driven (ids no longer in the dead set are skipped).
-- Flags: none, so when Redis is out of memory it refuses the whole script before it runs.
-- include: keys, clock, tally
local now = server_now()
local prefix = ARGV[1]
local out = {}
for _, id in ipairs(cjson.decode(ARGV[2])) do
  local job = job_key(prefix, id)
  if redis.call('ZREM', KEYS[1], id) == 1 and redis.call('HGET', job, 'status') == STATUS.DEAD then
    local level = redis.call('HGET', job, 'priority') or '0'
    local entry = redis.call('XADD', stream_key(prefix, level), '*', 'id', id)
    redis.call('HSET', job, 'status', STATUS.QUEUED, 'attempts', 0, 'entry', entry, 'level', level,
      'redriven_at', now)
    redis.call('HDEL', job, 'finished_at', 'started_at', 'run_at')
    redis.call('PERSIST', job)
    local idem = redis.call('HGET', job, 'key')
    if idem then redis.call('PERSIST', idem) end
    out[#out + 1] = id
    count(TALLY.REDRIVEN)
  end
end
write_tally(KEYS[2])
return out
