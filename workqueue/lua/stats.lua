-- One queue's current counts and cumulative counters, in one round trip.
-- KEYS[1..n] the queue's level streams, KEYS[n+1] scheduled zset, KEYS[n+2] dead zset,
--   KEYS[n+3] stats hash
-- ARGV[1] consumer group, ARGV[2] dead TTL (ms): older dead ids name expired records
-- Returns {waiting, active, scheduled, dead, enqueue time (epoch ms) of the oldest waiting job or -1,
--   counter field, value, ...}.
local n = #KEYS - 3
local waiting, active, oldest = 0, 0, -1
for s = 1, n do
  local length = redis.call('XLEN', KEYS[s])
  if length > 0 then
    local pending = redis.call('XPENDING', KEYS[s], ARGV[1])[1]
    active = active + pending
    waiting = waiting + length - pending
    if length > pending then
      -- The first entry after the group's last delivered one is this level's oldest waiting job;
      -- a stream entry id starts with its creation time in ms.
      for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[s])) do
        local fields = {}
        for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
        if fields['name'] == ARGV[1] then
          local first = redis.call('XRANGE', KEYS[s], '(' .. fields['last-delivered-id'], '+', 'COUNT', 1)
          if first[1] then
            local ms = tonumber(string.match(first[1][1], '^(%d+)'))
            if oldest < 0 or ms < oldest then oldest = ms end
          end
        end
      end
    end
  end
end
local clock = redis.call('TIME')
local oldest_alive = clock[1] + clock[2] / 1000000 - tonumber(ARGV[2]) / 1000
local dead = redis.call('ZCOUNT', KEYS[n + 2], oldest_alive, '+inf')
local out = {waiting, active, redis.call('ZCARD', KEYS[n + 1]), dead, oldest}
for _, v in ipairs(redis.call('HGETALL', KEYS[n + 3])) do out[#out + 1] = v end
return out
