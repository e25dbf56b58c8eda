-- Mark freshly delivered jobs active and return what the worker needs to run them.
-- KEYS[1] stream, KEYS[2..] one job hash per delivery
-- ARGV[1] consumer group, ARGV[2] consumer (worker) name, ARGV[3] now,
--   then per job: the stream entry id that delivered it
-- Returns per job either false (record gone or already finished: the delivery is dropped)
--   or {type, payload, retries, attempts, timeout, enqueued_at}.
local out = {}
for i = 2, #KEYS do
  local delivery = ARGV[2 + i]
  local status = redis.call('HGET', KEYS[i], 'status')
  if status == false or status == 'succeeded' or status == 'dead' or status == 'cancelled' then
    redis.call('XACK', KEYS[1], ARGV[1], delivery)
    redis.call('XDEL', KEYS[1], delivery)
    out[#out + 1] = false
  else
    local attempts = redis.call('HINCRBY', KEYS[i], 'attempts', 1)
    redis.call('HSET', KEYS[i], 'status', 'active', 'started_at', ARGV[3],
      'worker', ARGV[2], 'delivery', delivery)
    local job = redis.call('HMGET', KEYS[i], 'type', 'payload', 'retries', 'timeout', 'enqueued_at')
    out[#out + 1] = {job[1], job[2], job[3], attempts, job[4], job[5]}
  end
end
return out
