#!lua flags=allow-oom
-- Put unfinished deliveries back on the queue so another worker starts them at once: on graceful
-- shutdown a worker hands back its own ('release'); after a crash, any worker takes back those of
-- workers whose heartbeat key has expired ('reap'). The heartbeat is checked in the same atomic
-- step as the requeue, so a worker that is alive never loses a job, however long it runs.
-- 'orphans': a live worker takes back its own deliveries that it no longer holds and that have
-- been pending longer than `idle`: after a failover lost the last writes of a dead master, a job
-- this worker finished (or never received) can be pending under its name again, and nobody else
-- would ever take it from a live worker.
-- Requeued jobs go onto the highest level's stream: they were already waiting once.
-- KEYS[1] stats     the queue's counters
-- ARGV[1] prefix    the queue's key prefix 'wq:{q}:'
-- ARGV[2] consumer  this worker's consumer name
-- ARGV[3] limit     most entries to move per consumer and stream
-- ARGV[4] mode      'reap', 'release' or 'orphans'
-- ARGV[5] held      for 'orphans': JSON array of 'level:delivery' this worker holds (running,
--                   fetched ahead, or being recorded)
-- ARGV[6] idle      for 'orphans': ms a delivery must have been pending to count as an orphan
-- Returns {moved, dead consumer names...}.
-- Flags: allow-oom, on purpose: it moves jobs already stored, and crash recovery and hand-backs
-- must not wait for memory.
-- include: keys, tally
local prefix, me, limit, mode = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local top_level = LEVELS - 1
local top = stream_key(prefix, top_level)
local moved = 0
local reaped = {}

local held = {}
if mode == 'orphans' then
  for _, d in ipairs(cjson.decode(ARGV[5])) do held[d] = true end
end

-- Requeue one pending delivery of `stream` (the stream of `level`), if its job is still active
-- through it; a cancelled job's delivery is dropped and counted.
local function take_back(stream, level, delivery)
  local found = redis.call('XRANGE', stream, delivery, delivery)
  redis.call('XACK', stream, GROUP, delivery)
  redis.call('XDEL', stream, delivery)
  if not found[1] then return end
  local id = found[1][2][2]
  local job = job_key(prefix, id)
  local f = redis.call('HMGET', job, 'status', 'entry', 'type', 'level')
  if f[1] == STATUS.ACTIVE and f[2] == delivery and f[4] == tostring(level) then
    local entry = redis.call('XADD', top, '*', 'id', id)
    redis.call('HSET', job, 'status', STATUS.QUEUED, 'entry', entry, 'level', top_level)
    if mode == 'release' then
      -- Handed back at a graceful shutdown: that attempt did not fail, it does not count.
      redis.call('HINCRBY', job, 'attempts', -1)
      count(TALLY.RELEASED)
    else
      count(TALLY.RECOVERED)
      count_type(TALLY.RECOVERED, f[3])
    end
    moved = moved + 1
  elseif f[1] == STATUS.CANCELLED then
    count(TALLY.CANCELLED)
    count_type(TALLY.CANCELLED, f[3])
  end
end

local function requeue(stream, consumer, level)
  local pending
  if mode == 'orphans' then
    pending = redis.call('XPENDING', stream, GROUP, 'IDLE', tonumber(ARGV[6]), '-', '+', limit, consumer)
  else
    pending = redis.call('XPENDING', stream, GROUP, '-', '+', limit, consumer)
  end
  for _, p in ipairs(pending) do
    if not held[level .. ':' .. p[1]] then take_back(stream, level, p[1]) end
  end
  if mode ~= 'orphans' and #pending < limit then redis.call('XGROUP', 'DELCONSUMER', stream, GROUP, consumer) end
end

for level = top_level, 0, -1 do  -- highest level first, so requeued jobs keep their priority order
  local stream = stream_key(prefix, level)
  if mode ~= 'reap' then
    requeue(stream, me, level)
  else
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, GROUP)) do
      local name = c[2]
      if name ~= me and redis.call('EXISTS', worker_key(prefix, name)) == 0 then
        if c[4] > 0 then reaped[name] = true end
        requeue(stream, name, level)
      end
    end
  end
end
write_tally(KEYS[1])
local out = {moved}
for name in pairs(reaped) do out[#out + 1] = name end
return out
