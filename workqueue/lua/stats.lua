-- One queue's current counts and cumulative counters, in one round trip.
-- KEYS[1..n] the queue's level streams, KEYS[n+1] scheduled zset, KEYS[n+2] dead zset,
--   KEYS[n+3] stats hash
-- ARGV[1] consumer group
-- Returns {waiting, active, scheduled, dead, counter field, value, ...}.
local n = #KEYS - 3
local waiting, active = 0, 0
for s = 1, n do
  local length = redis.call('XLEN', KEYS[s])
  if length > 0 then
    local pending = redis.call('XPENDING', KEYS[s], ARGV[1])[1]
    active = active + pending
    waiting = waiting + length - pending
  end
end
local out = {waiting, active, redis.call('ZCARD', KEYS[n + 1]), redis.call('ZCARD', KEYS[n + 2])}
for _, v in ipairs(redis.call('HGETALL', KEYS[n + 3])) do out[#out + 1] = v end
return out
