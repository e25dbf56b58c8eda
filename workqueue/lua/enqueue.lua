-- Create jobs and make them visible to workers, all or nothing.
-- KEYS[1] stream, KEYS[2] stats hash, KEYS[3..] one job hash per job
-- ARGV[1] queue name, ARGV[2] now (epoch seconds),
--   then per job 5 values: id, type, payload (JSON), retries, timeout
-- Returns the number of jobs enqueued.
local n = #KEYS - 2
for i = 1, n do
  local a = 2 + (i - 1) * 5
  redis.call('HSET', KEYS[2 + i],
    'id', ARGV[a + 1], 'type', ARGV[a + 2], 'queue', ARGV[1], 'payload', ARGV[a + 3],
    'retries', ARGV[a + 4], 'timeout', ARGV[a + 5], 'attempts', 0,
    'status', 'queued', 'enqueued_at', ARGV[2])
  redis.call('XADD', KEYS[1], '*', 'id', ARGV[a + 1])
end
redis.call('HINCRBY', KEYS[2], 'enqueued', n)
return n
