-- Put a worker's unfinished deliveries back on the stream so another worker starts them at once:
-- on graceful shutdown (the worker hands back its own) or after a crash (another worker recovers
-- the deliveries of one whose heartbeat expired). The heartbeat is checked here, in the same atomic
-- step, so a worker that is alive never loses a job, however long it runs.
-- KEYS[1] stream, KEYS[2] stats hash, KEYS[3] heartbeat key of the worker whose jobs are requeued
-- ARGV[1] consumer group, ARGV[2] that worker's consumer name, ARGV[3] job hash key prefix,
--   ARGV[4] most entries to move, ARGV[5] stats field to count them in ('recovered' or 'released'),
--   ARGV[6] '1' to refuse while the heartbeat key exists
-- Returns the number requeued, or -1 if the worker is alive.
if ARGV[6] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then return -1 end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', tonumber(ARGV[4]), ARGV[2])
local moved = 0
for _, entry in ipairs(pending) do
  local delivery = entry[1]
  local found = redis.call('XRANGE', KEYS[1], delivery, delivery)
  redis.call('XACK', KEYS[1], ARGV[1], delivery)
  redis.call('XDEL', KEYS[1], delivery)
  if found[1] then
    local id = found[1][2][2]
    local job = ARGV[3] .. id
    local status = redis.call('HGET', job, 'status')
    if status == 'active' or status == 'queued' then
      redis.call('XADD', KEYS[1], '*', 'id', id)
      redis.call('HSET', job, 'status', 'queued')
      redis.call('HDEL', job, 'delivery')
      moved = moved + 1
    end
  end
end
if #pending < tonumber(ARGV[4]) then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
if moved > 0 then redis.call('HINCRBY', KEYS[2], ARGV[5], moved) end
return moved
