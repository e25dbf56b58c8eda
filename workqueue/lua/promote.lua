-- Move jobs whose time has come (retry backoff) from the scheduled set onto the stream.
-- KEYS[1] scheduled zset, KEYS[2] stream
-- ARGV[1] now (epoch ms), ARGV[2] most to move, ARGV[3] job hash key prefix (same hash tag)
-- Returns {moved, score of the next scheduled job or -1}.
-- Job hashes are addressed by prefix: which jobs are due is only known inside the script, and they
-- share the queue's hash tag, so this stays within one Redis Cluster slot.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'id', id)
  redis.call('HSET', ARGV[3] .. id, 'status', 'queued')
  redis.call('ZREM', KEYS[1], id)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if next[2] then return {#due, next[2]} end
return {#due, -1}
