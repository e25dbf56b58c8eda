#!lua flags=allow-oom
-- Deliver up to `count` waiting jobs to one worker and mark them active, reading the priority
-- streams highest level first (or lowest first, when the worker asks, so low levels never starve).
-- A job about to start more often than its retries allow has crashed its workers every time (a
-- retry after a failure never gets here past its limit): it is made dead instead of delivered,
-- so a poison job cannot crash-loop the fleet.
-- KEYS[1] stats      the queue's counters
-- KEYS[2] dead       the queue's dead set
-- ARGV[1] prefix     the queue's key prefix 'wq:{q}:'
-- ARGV[2] consumer   this worker's consumer name
-- ARGV[3] count      most jobs to deliver
-- ARGV[4] order      'high' (highest level first) or 'low' (lowest first)
-- ARGV[5] retention  JSON [result TTL ms, dead TTL ms, dead max, key TTL ms]
-- Returns {jobs, cursors, buried}: jobs is a flat list, 11 values per job: id, delivery (stream
--   entry id), level, type, payload, retries, attempts, timeout, due (enqueue time, or run_at if
--   later), priority, trace (nil unless the job has one); cursors, only when no job was delivered,
--   has per level, highest first, the group's last delivered entry id, from where a blocking XREAD
--   waits for the next job; buried lists the ids of the poison jobs made dead.
-- Flags: allow-oom, on purpose: when Redis is out of memory workers must keep draining, which
-- is what frees memory (a fetch only changes records that exist).
-- include: keys, clock, tally, bury, ended, cursor
local now = server_now()
local prefix, consumer = ARGV[1], ARGV[2]
local wanted = tonumber(ARGV[3])
local r = retention(ARGV[5])
local first, last, step = LEVELS - 1, 0, -1
if ARGV[4] == 'low' then first, last, step = 0, LEVELS - 1, 1 end
local jobs, buried_ids = {}, {}
local delivered = 0
for level = first, last, step do
  local stream = stream_key(prefix, level)
  while delivered < wanted do
    local got = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', wanted - delivered,
      'STREAMS', stream, '>')
    if not got then break end
    for _, entry in ipairs(got[1][2]) do
      local delivery, id = entry[1], entry[2][2]
      local job = job_key(prefix, id)
      -- One read for everything below (this runs once per job: every command counts).
      local f = redis.call('HMGET', job, 'status', 'type', 'payload', 'retries', 'timeout', 'enqueued_at',
        'priority', 'run_at', 'attempts', 'key', 'key_ttl', 'trace')
      if f[1] == STATUS.QUEUED then
        local attempts = tonumber(f[9]) + 1
        if attempts > tonumber(f[4]) + 1 then
          redis.call('XACK', stream, GROUP, delivery)
          redis.call('XDEL', stream, delivery)
          bury(KEYS[2], job, id, f[2], now, string.format(
            'exceeded its delivery limit: the worker running it died each of its %d attempts', attempts - 1),
            f[10], f[11], r, 'attempts', attempts - 1)
          buried_ids[#buried_ids + 1] = id
        else
          redis.call('HSET', job, 'status', STATUS.ACTIVE, 'attempts', attempts, 'started_at', now,
            'worker', consumer, 'entry', delivery)
          local due = string.format('%.17g', math.max(tonumber(f[6]), tonumber(f[8]) or 0))
          for _, v in ipairs({id, delivery, level, f[2], f[3], f[4], attempts, f[5], due, f[7], f[12]}) do
            jobs[#jobs + 1] = v
          end
          delivered = delivered + 1
        end
      else
        -- Cancelled, expired or otherwise no longer waiting: drop this stale entry.
        redis.call('XACK', stream, GROUP, delivery)
        redis.call('XDEL', stream, delivery)
      end
    end
  end
end
trim_dead(KEYS[2], prefix, now, r)
write_endings(prefix, now, r)
write_tally(KEYS[1])
local cursors = {}
if delivered == 0 then
  for level = LEVELS - 1, 0, -1 do cursors[#cursors + 1] = last_delivered(stream_key(prefix, level)) end
end
return {jobs, cursors, buried_ids}
