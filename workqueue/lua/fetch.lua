-- Deliver up to COUNT waiting jobs to one worker and mark them active, reading the priority
-- streams in the order given (normally highest level first).
-- KEYS[1..n] the queue's level streams, in reading order
-- ARGV[1] consumer group, ARGV[2] consumer (worker) name, ARGV[3] count,
--   ARGV[4] the queue's key prefix 'wq:{q}:' (job hashes are prefix..'job:'..id, same hash slot)
-- Returns {jobs, cursors}: jobs is a flat list, 10 values per job: id, delivery (stream entry id),
--   level, type, payload, retries, attempts, timeout, due (enqueue time, or run_at if later), priority;
--   cursors, only when no job was delivered, has per stream the group's last delivered entry id,
--   from where a blocking XREAD waits for the next job.
-- Timestamps come from the Redis server's clock, so they are ordered whichever client wrote them.
local clock = redis.call('TIME')
local now = clock[1] + clock[2] / 1000000
local wanted = tonumber(ARGV[3])
local jobs = {}
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
      local status = redis.call('HGET', job, 'status')
      if status == 'queued' then
        local attempts = redis.call('HINCRBY', job, 'attempts', 1)
        redis.call('HSET', job, 'status', 'active', 'started_at', now, 'worker', ARGV[2], 'entry', delivery)
        local f = redis.call('HMGET', job, 'type', 'payload', 'retries', 'timeout', 'enqueued_at', 'priority', 'run_at')
        local due = string.format('%.17g', math.max(tonumber(f[5]), tonumber(f[7]) or 0))
        for _, v in ipairs({id, delivery, level, f[1], f[2], f[3], attempts, f[4], due, f[6]}) do
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
return {jobs, cursors}
