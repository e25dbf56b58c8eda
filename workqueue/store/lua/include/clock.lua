-- Timestamps come from the Redis server's clock, so they are ordered whichever client wrote them.
local function server_now()
  local t = redis.call('TIME')
  return t[1] + t[2] / 1000000
end
