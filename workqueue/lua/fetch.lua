-- Deliver up to COUNT waiting jobs to one worker and mark them active, reading the priority
-- streams in the order given (normally highest level first).
-- KEYS[1..n] the queue's level streams, in reading order
-- ARGV[1] consumer group, ARGV[2] consumer (worker) name, ARGV[3] count,
--   ARGV[4] the queue's key prefix 'wq:{q}:' (job hashes are prefix..'job:'..id, the dead set
--   prefix..'dead', the stats prefix..'stats': all in the same hash slot),
--   ARGV[5] dead TTL (ms), ARGV[6] idempotency key TTL (ms)
-- A job about to start more often than its retries allow has crashed its workers every time (a
-- retry after a failure never gets here past its limit): it is made dead instead of delivered,
-- so a poison job cannot crash-loop the fleet.
-- Returns {jobs, cursors, buried}: buried lists the ids of the jobs made dead that way; jobs is a flat list, 10 values per job: id, delivery (stream entry id),
--   level, type, payload, retries, attempts, timeout, due (enqueue time, or run_at if later), priority;
--   cursors, only when no job was delivered, has per stream the group's last delivered entry id,
--   from where a blocking XREAD waits for the next job.
-- Timestamps come from the Redis server's clock, so they are ordered whichever client wrote them.
local clock = redis.call('TIME')
local now = clock[1] + clock[2] / 1000000
local wanted = tonumber(ARGV[3])
local jobs = {}
local buried = {}
local delivered = 0
for s = 1, #KEYS do
  local stream = KEYS[s]
  local level = string.match(stream, '(%d+)$')
  while delivered < wanted do
    local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', wanted - delivered,
      'STREAMS', stream, '>')
    if not got then break end
    for _, entry in ipairs(got[1][2]) do
      local delivery, id = entry[1], entry[2][2]
      local job = ARGV[4] .. 'job:' .. id
      -- One read for everything below (this runs once per job: every command counts).
      local f = redis.call('HMGET', job, 'status', 'type', 'payload', 'retries', 'timeout', 'enqueued_at',
        'priority', 'run_at', 'attempts', 'key', 'key_ttl')
      local status = f[1]
      local attempts = 0
      if status == 'queued' then
        attempts = tonumber(f[9]) + 1
        if attempts > tonumber(f[4]) + 1 then status = 'poison' end
      end
      if status == 'poison' then
        redis.call('XACK', stream, ARGV[1], delivery)
        redis.call('XDEL', stream, delivery)
        redis.call('HSET', job, 'status', 'dead', 'finished_at', now, 'attempts', attempts - 1, 'error',
          string.format('exceeded its delivery limit: the worker running it died each of its %d attempts', attempts - 1))
        redis.call('HDEL', job, 'entry')
        redis.call('PEXPIRE', job, ARGV[5])
        if f[10] then redis.call('PEXPIRE', f[10], f[11] or ARGV[6]) end
        redis.call('ZADD', ARGV[4] .. 'dead', now, id)
        redis.call('HINCRBY', ARGV[4] .. 'stats', 'failed', 1)
        redis.call('HINCRBY', ARGV[4] .. 'stats', 'dead|' .. f[2], 1)
        buried[#buried + 1] = id
      elseif status == 'queued' then
        redis.call('HSET', job, 'status', 'active', 'attempts', attempts, 'started_at', now, 'worker', ARGV[2],
          'entry', delivery)
        local due = string.format('%.17g', math.max(tonumber(f[6]), tonumber(f[8]) or 0))
        for _, v in ipairs({id, delivery, level, f[2], f[3], f[4], attempts, f[5], due, f[7]}) do
          jobs[#jobs + 1] = v
        end
        delivered = delivered + 1
      else
        -- Cancelled, expired or otherwise no longer waiting: drop this stale entry.
        redis.call('XACK', stream, ARGV[1], delivery)
        redis.call('XDEL', stream, delivery)
      end
    end
  end
end
local cursors = {}
if delivered == 0 then
  for s = 1, #KEYS do
    cursors[s] = '0-0'
    for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[s])) do
      local fields = {}
      for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
      if fields['name'] == ARGV[1] then cursors[s] = fields['last-delivered-id'] end
    end
  end
end
return {jobs, cursors, buried}
