-- include: keys, retention, tally, ended
-- Make a job dead, the one way every script does it: its record keeps the error and expires after
-- the dead TTL, its id goes on the dead set under a score unique within this call (so paging the set
-- by score loses none), and it counts as a failed attempt and a death of its type. `...` are more
-- fields for the record. Call `trim_dead` once at the end of a script that buried anything.
local buried = 0
local function bury(dead, job, id, task_type, now, err, key, key_ttl, r, ...)
  redis.call('HSET', job, 'status', STATUS.DEAD, 'finished_at', now, 'error', err, ...)
  redis.call('HDEL', job, 'entry')
  ended(job, id, STATUS.DEAD, now, r.dead_ttl, key, key_ttl, r)
  redis.call('ZADD', dead, now + buried / 1000000, id)
  buried = buried + 1
  count(TALLY.FAILED)
  count_type(TALLY.FAILED, task_type)
  count_type(TALLY.DEAD, task_type)
end

-- The dead set forgets what has expired and keeps at most its maximum size (dropping the oldest,
-- records included), so it never outgrows the records it names.
local function trim_dead(dead, prefix, now, r)
  if buried == 0 then return end
  redis.call('ZREMRANGEBYSCORE', dead, '-inf', now - r.dead_ttl / 1000)
  local excess = redis.call('ZCARD', dead) - r.dead_max
  if excess > 0 then
    local popped = redis.call('ZPOPMIN', dead, excess)
    for j = 1, #popped, 2 do redis.call('DEL', job_key(prefix, popped[j])) end
  end
end
