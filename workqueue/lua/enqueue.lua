-- Create jobs, all or nothing: refuse the whole call if an idempotency key is reused for different
-- work or the queue would grow past its maximum length; otherwise write every job and publish it
-- (onto its priority level's stream, or into the scheduled set when it has a start time).
-- KEYS[1] stats hash, KEYS[2] scheduled zset (every other key shares their hash tag: streams are
--   prefix..'stream:'..level, job hashes prefix..'job:'..id, idempotency keys as given)
-- ARGV[1] queue name, ARGV[2] max length (0: unlimited), ARGV[3] number of priority levels,
--   ARGV[4] the queue's key prefix 'wq:{q}:', ARGV[5] '1' to check only (write nothing),
--   ARGV[6] the jobs as one JSON array (one argument instead of ten per job: cheaper to send),
--   each [id, type, payload (JSON text), retries, timeout, priority, run_at (epoch ms, 0: now),
--   idempotency key ('' for none), fingerprint of type+payload, key TTL after the job ends (ms, 0: default)]
-- Returns {'conflict', job index (1-based), existing id} or {'full', current length}
--   or {'ok', id1, status1, created1, id2, ...}: created is 0 for a job that already existed.
-- Timestamps come from the Redis server's clock, so they are ordered whichever client wrote them.
local clock = redis.call('TIME')
local now = clock[1] + clock[2] / 1000000
local now_ms = now * 1000
local prefix = ARGV[4]
local jobs = cjson.decode(ARGV[6])
local answers = {}
local fresh = 0
local seen = {}
for i, j in ipairs(jobs) do
  local idem, fingerprint = j[8], j[9]
  if idem ~= '' then
    local existing = redis.call('GET', idem) or seen[idem]
    if existing then
      local sep = string.find(existing, ' ', 1, true)
      local id, print = string.sub(existing, 1, sep - 1), string.sub(existing, sep + 1)
      if print ~= fingerprint then return {'conflict', i, id} end
      local status = redis.call('HGET', prefix .. 'job:' .. id, 'status') or 'queued'
      answers[i] = {id, status}
    else
      seen[idem] = j[1] .. ' ' .. fingerprint
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
for i, j in ipairs(jobs) do
  if answers[i] then
    out[#out + 1] = answers[i][1]; out[#out + 1] = answers[i][2]; out[#out + 1] = 0
  else
    local id, level, run_at = j[1], j[6], j[7]
    local job = prefix .. 'job:' .. id
    local status = 'queued'
    if run_at > now_ms then status = 'scheduled' end
    redis.call('HSET', job, 'id', id, 'type', j[2], 'queue', ARGV[1], 'payload', j[3], 'retries', j[4],
      'timeout', j[5], 'priority', level, 'attempts', 0, 'status', status, 'enqueued_at', now)
    if status == 'scheduled' then
      redis.call('HSET', job, 'run_at', run_at / 1000)
      redis.call('ZADD', KEYS[2], run_at, id)
    else
      local entry = redis.call('XADD', prefix .. 'stream:' .. level, '*', 'id', id)
      redis.call('HSET', job, 'entry', entry, 'level', level)
    end
    if j[8] ~= '' then
      -- The key lives as long as the job, then its TTL runs from the job's end (set by finish).
      redis.call('SET', j[8], id .. ' ' .. j[9])
      redis.call('HSET', job, 'key', j[8])
      if j[10] > 0 then redis.call('HSET', job, 'key_ttl', j[10]) end
    end
    out[#out + 1] = id; out[#out + 1] = status; out[#out + 1] = 1
  end
end
if fresh > 0 then redis.call('HINCRBY', KEYS[1], 'enqueued', fresh) end
return out
