-- Create jobs, all or nothing: refuse the whole call if an idempotency key is reused for different
-- work or the queue would grow past its maximum length; otherwise write every job and publish it
-- (onto its priority level's stream, or into the scheduled set when it has a start time).
-- KEYS[1] stats hash, KEYS[2] scheduled zset,
--   then per job 2 keys: its job hash, its idempotency key (the job hash again when it has none)
-- ARGV[1] queue name, ARGV[2] max length (0: unlimited),
--   ARGV[3] number of priority levels, ARGV[4] the queue's key prefix 'wq:{q}:' (streams are
--   prefix..'stream:'..level and job hashes prefix..'job:'..id, all in the same hash slot),
--   ARGV[5] '1' to check only (write nothing), then per job 9 values: id, type, payload (JSON), retries, timeout, priority,
--   run_at (epoch ms, 0 to start now), fingerprint of type+payload ('' when no idempotency key),
--   idempotency key TTL after the job ends (ms, 0 for the default)
-- Returns {'conflict', job index (1-based), existing id} or {'full', current length}
--   or {'ok', id1, status1, created1, id2, ...}: created is 0 for a job that already existed.
-- Timestamps come from the Redis server's clock, so they are ordered whichever client wrote them.
local clock = redis.call('TIME')
local now = clock[1] + clock[2] / 1000000
local now_ms = now * 1000
local prefix = ARGV[4]
local jobs = (#KEYS - 2) / 2
local answers = {}
local fresh = 0
local seen = {}
for i = 1, jobs do
  local a = 5 + (i - 1) * 9
  local fingerprint = ARGV[a + 8]
  if fingerprint ~= '' then
    local idem = KEYS[2 + i * 2]
    local existing = redis.call('GET', idem) or seen[idem]
    if existing then
      local sep = string.find(existing, ' ', 1, true)
      local id, print = string.sub(existing, 1, sep - 1), string.sub(existing, sep + 1)
      if print ~= fingerprint then return {'conflict', i, id} end
      local status = redis.call('HGET', prefix .. 'job:' .. id, 'status') or 'queued'
      answers[i] = {id, status, 0}
    else
      seen[idem] = ARGV[a + 1] .. ' ' .. fingerprint
    end
  end
  if not answers[i] then fresh = fresh + 1 end
end
local max_length = tonumber(ARGV[2])
if max_length > 0 and fresh > 0 then
  local length = redis.call('ZCARD', KEYS[2])
  for level = 0, tonumber(ARGV[3]) - 1 do
    length = length + redis.call('XLEN', prefix .. 'stream:' .. level)
  end
  if length + fresh > max_length then return {'full', length} end
end
local out = {'ok'}
if ARGV[5] == '1' then return out end
for i = 1, jobs do
  local a = 5 + (i - 1) * 9
  if answers[i] then
    out[#out + 1] = answers[i][1]; out[#out + 1] = answers[i][2]; out[#out + 1] = 0
  else
    local id, job = ARGV[a + 1], KEYS[1 + i * 2]
    local level, run_at = ARGV[a + 6], tonumber(ARGV[a + 7])
    local status = 'queued'
    if run_at > now_ms then status = 'scheduled' end
    redis.call('HSET', job, 'id', id, 'type', ARGV[a + 2], 'queue', ARGV[1], 'payload', ARGV[a + 3],
      'retries', ARGV[a + 4], 'timeout', ARGV[a + 5], 'priority', level, 'attempts', 0,
      'status', status, 'enqueued_at', now)
    if status == 'scheduled' then
      redis.call('HSET', job, 'run_at', run_at / 1000)
      redis.call('ZADD', KEYS[2], run_at, id)
    else
      local entry = redis.call('XADD', prefix .. 'stream:' .. level, '*', 'id', id)
      redis.call('HSET', job, 'entry', entry, 'level', level)
    end
    if ARGV[a + 8] ~= '' then
      -- The key lives as long as the job, then its TTL runs from the job's end (set by finish).
      redis.call('SET', KEYS[2 + i * 2], id .. ' ' .. ARGV[a + 8])
      redis.call('HSET', job, 'key', KEYS[2 + i * 2])
      if ARGV[a + 9] ~= '0' then redis.call('HSET', job, 'key_ttl', ARGV[a + 9]) end
    end
    out[#out + 1] = id; out[#out + 1] = status; out[#out + 1] = 1
  end
end
if fresh > 0 then redis.call('HINCRBY', KEYS[1], 'enqueued', fresh) end
return out
