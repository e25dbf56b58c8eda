-- Move jobs whose time has come (delayed jobs, retry backoffs) from the scheduled set onto their
-- priority level's stream.
-- KEYS[1] scheduled zset
-- ARGV[1] now (epoch ms), ARGV[2] most to move, ARGV[3] the queue's key prefix 'wq:{q}:'
-- Returns {moved, score (epoch ms) of the next scheduled job or -1}.
-- Streams and job hashes are addressed by prefix: which jobs are due is only known inside the
-- script, and they share the queue's hash tag, so this stays within one Redis Cluster slot.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  local job = ARGV[3] .. 'job:' .. id
  local status = redis.call('HGET', job, 'status')
  if status == 'scheduled' or status == 'retrying' then
    local level = redis.call('HGET', job, 'priority') or '0'
    local entry = redis.call('XADD', ARGV[3] .. 'stream:' .. level, '*', 'id', id)
    redis.call('HSET', job, 'status', 'queued', 'entry', entry, 'level', level)
  end
  redis.call('ZREM', KEYS[1], id)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if next[2] then return {#due, next[2]} end
return {#due, -1}
