#!lua flags=allow-oom
-- Move jobs whose time has come (delayed jobs, retry backoffs) from the scheduled set onto their
-- priority level's stream.
-- KEYS[1] scheduled  the queue's delayed jobs
-- ARGV[1] prefix     the queue's key prefix 'wq:{q}:'
-- ARGV[2] now        epoch ms: jobs due at or before it move
-- ARGV[3] limit      most jobs to move
-- Returns {moved, score (epoch ms) of the next scheduled job or -1}.
-- Streams and job hashes are addressed by prefix: which jobs are due is only known inside the
-- script, and they share the queue's hash tag, so this stays within one Redis Cluster slot.
-- Flags: allow-oom, on purpose: it moves jobs already stored (a sorted-set member becomes a
-- stream entry), and delayed jobs and retries are part of the drain that frees memory.
-- include: keys
local prefix = ARGV[1]
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(due) do
  local job = job_key(prefix, id)
  local f = redis.call('HMGET', job, 'status', 'priority')
  if f[1] == STATUS.SCHEDULED or f[1] == STATUS.RETRYING then
    local level = f[2] or '0'
    local entry = redis.call('XADD', stream_key(prefix, level), '*', 'id', id)
    redis.call('HSET', job, 'status', STATUS.QUEUED, 'entry', entry, 'level', level)
  end
  redis.call('ZREM', KEYS[1], id)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if next[2] then return {#due, next[2]} end
return {#due, -1}
