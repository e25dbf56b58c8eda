-- Put unfinished deliveries back on the queue so another worker starts them at once: on graceful
-- shutdown a worker hands back its own ('release'); after a crash, any worker takes back those of
-- workers whose heartbeat key has expired ('reap'). The heartbeat is checked in the same atomic
-- step as the requeue, so a worker that is alive never loses a job, however long it runs.
-- Requeued jobs go onto the highest level's stream: they were already waiting once.
-- KEYS[1..n] the queue's level streams, lowest level first, KEYS[n+1] stats hash
-- ARGV[1] consumer group, ARGV[2] this worker's consumer name, ARGV[3] the queue's key prefix
--   'wq:{q}:' (heartbeats are prefix..'worker:'..name, job hashes prefix..'job:'..id),
--   ARGV[4] most entries to move per consumer and stream, ARGV[5] 'reap' or 'release'
-- Returns {moved, dead consumer names...}.
local prefix, me, limit = ARGV[3], ARGV[2], tonumber(ARGV[4])
local stats = KEYS[#KEYS]
local top = KEYS[#KEYS - 1]
local top_level = string.match(top, '(%d+)$')
local moved, dropped = 0, 0
local reaped = {}

local function requeue(stream, consumer)
  local pending = redis.call('XPENDING', stream, ARGV[1], '-', '+', limit, consumer)
  for _, p in ipairs(pending) do
    local delivery = p[1]
    local found = redis.call('XRANGE', stream, delivery, delivery)
    redis.call('XACK', stream, ARGV[1], delivery)
    redis.call('XDEL', stream, delivery)
    if found[1] then
      local id = found[1][2][2]
      local job = prefix .. 'job:' .. id
      local status = redis.call('HGET', job, 'status')
      if status == 'active' and redis.call('HGET', job, 'entry') == delivery then
        local entry = redis.call('XADD', top, '*', 'id', id)
        redis.call('HSET', job, 'status', 'queued', 'entry', entry, 'level', top_level)
        if ARGV[5] == 'reap' then
          redis.call('HINCRBY', stats, 'recovered|' .. (redis.call('HGET', job, 'type') or '?'), 1)
        else
          -- Handed back at a graceful shutdown: that attempt did not fail, it does not count.
          redis.call('HINCRBY', job, 'attempts', -1)
        end
        moved = moved + 1
      elseif status == 'cancelled' then
        redis.call('HINCRBY', stats, 'cancelled|' .. (redis.call('HGET', job, 'type') or '?'), 1)
        dropped = dropped + 1
      end
    end
  end
  if #pending < limit then redis.call('XGROUP', 'DELCONSUMER', stream, ARGV[1], consumer) end
end

for s = #KEYS - 1, 1, -1 do  -- highest level first, so requeued jobs keep their priority order
  local stream = KEYS[s]
  if ARGV[5] == 'release' then
    requeue(stream, me)
  else
    for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', stream, ARGV[1])) do
      local name = c[2]
      if name ~= me and redis.call('EXISTS', prefix .. 'worker:' .. name) == 0 then
        if c[4] > 0 then reaped[name] = true end
        requeue(stream, name)
      end
    end
  end
end
local field = 'recovered'
if ARGV[5] == 'release' then field = 'released' end
if moved > 0 then redis.call('HINCRBY', stats, field, moved) end
if dropped > 0 then redis.call('HINCRBY', stats, 'cancelled', dropped) end
local out = {moved}
for name in pairs(reaped) do out[#out + 1] = name end
return out
