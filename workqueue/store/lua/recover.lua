-- Put unfinished deliveries back on the queue so another worker starts them at once: on graceful
-- shutdown a worker hands back its own ('release'); after a crash, any worker takes back those of
-- workers whose heartbeat key has expired ('reap'). The heartbeat is checked in the same atomic
-- step as the requeue, so a worker that is alive never loses a job, however long it runs.
-- Requeued jobs go onto the highest level's stream: they were already waiting once.
-- KEYS[1] stats     the queue's counters
-- ARGV[1] prefix    the queue's key prefix 'wq:{q}:'
-- ARGV[2] consumer  this worker's consumer name
-- ARGV[3] limit     most entries to move per consumer and stream
-- ARGV[4] mode      'reap' or 'release'
-- Returns {moved, dead consumer names...}.
-- include: keys, tally
local prefix, me, limit, mode = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local top_level = LEVELS - 1
local top = stream_key(prefix, top_level)
local moved = 0
local reaped = {}

local function requeue(stream, consumer)
  local pending = redis.call('XPENDING', stream, GROUP, '-', '+', limit, consumer)
  for _, p in ipairs(pending) do
    local delivery = p[1]
    local found = redis.call('XRANGE', stream, delivery, delivery)
    redis.call('XACK', stream, GROUP, delivery)
    redis.call('XDEL', stream, delivery)
    if found[1] then
      local id = found[1][2][2]
      local job = job_key(prefix, id)
      local f = redis.call('HMGET', job, 'status', 'entry', 'type')
      if f[1] == STATUS.ACTIVE and f[2] == delivery then
        local entry = redis.call('XADD', top, '*', 'id', id)
        redis.call('HSET', job, 'status', STATUS.QUEUED, 'entry', entry, 'level', top_level)
        if mode == 'reap' then
          count(TALLY.RECOVERED)
          count_type(TALLY.RECOVERED, f[3])
        else
          -- Handed back at a graceful shutdown: that attempt did not fail, it does not count.
          redis.call('HINCRBY', job, 'attempts', -1)
          count(TALLY.RELEASED)
        end
        moved = moved + 1
      elseif f[1] == STATUS.CANCELLED then
        count(TALLY.CANCELLED)
        count_type(TALLY.CANCELLED, f[3])
      end
    end
  end
  if #pending < limit then redis.call('XGROUP', 'DELCONSUMER', stream, GROUP, consumer) end
end

for level = top_level, 0, -1 do  -- highest level first, so requeued jobs keep their priority order
  local stream = stream_key(prefix, level)
  if mode == 'release' then
    requeue(stream, me)
  else
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, GROUP)) do
      local name = c[2]
      if name ~= me and redis.call('EXISTS', worker_key(prefix, name)) == 0 then
        if c[4] > 0 then reaped[name] = true end
        requeue(stream, name)
      end
    end
  end
end
write_tally(KEYS[1])
local out = {moved}
for name in pairs(reaped) do out[#out + 1] = name end
return out
