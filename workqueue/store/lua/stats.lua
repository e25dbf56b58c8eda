#!lua flags=no-writes
-- One queue's current counts and cumulative counters, in one round trip.
-- KEYS[1] scheduled  the queue's delayed jobs
-- KEYS[2] dead       the queue's dead set
-- KEYS[3] stats      the queue's counters
-- ARGV[1] prefix     the queue's key prefix 'wq:{q}:'
-- ARGV[2] dead_ttl   ms: older ids in the dead set name expired records
-- Returns {waiting, active, scheduled, dead, enqueue time (epoch ms) of the oldest waiting job or -1,
--   counter field, value, ...}.
-- Flags: no-writes: it only reads, so Redis runs it when out of memory (and on replicas).
-- include: keys, clock, cursor
local waiting, active, oldest = 0, 0, -1
for level = 0, LEVELS - 1 do
  local stream = stream_key(ARGV[1], level)
  local length = redis.call('XLEN', stream)
  if length > 0 then
    local pending = redis.call('XPENDING', stream, GROUP)[1]
    active = active + pending
    waiting = waiting + length - pending
    if length > pending then
      -- The first entry after the group's last delivered one is this level's oldest waiting job;
      -- a stream entry id starts with its creation time in ms.
      local first = redis.call('XRANGE', stream, '(' .. last_delivered(stream), '+', 'COUNT', 1)
      if first[1] then
        local ms = tonumber(string.match(first[1][1], '^(%d+)'))
        if oldest < 0 or ms < oldest then oldest = ms end
      end
    end
  end
end
local oldest_alive = server_now() - tonumber(ARGV[2]) / 1000
local dead = redis.call('ZCOUNT', KEYS[2], oldest_alive, '+inf')
local out = {waiting, active, redis.call('ZCARD', KEYS[1]), dead, oldest}
for _, v in ipairs(redis.call('HGETALL', KEYS[3])) do out[#out + 1] = v end
return out
