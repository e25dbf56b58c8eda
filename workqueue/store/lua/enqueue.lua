#!lua
-- Create jobs for one or more requests at once. Each request is all or nothing: it is refused
-- whole if one of its idempotency keys is reused for different work or the queue would grow past
-- its maximum length, and a refused request changes nothing; the others go ahead. (The producer
-- gathers the requests that arrive together into one call: one round trip for many requests.)
-- KEYS[1] stats       the queue's counters
-- KEYS[2] scheduled   the queue's delayed jobs
-- ARGV[1] queue       the queue's name
-- ARGV[2] prefix      the queue's key prefix 'wq:{q}:'
-- ARGV[3] max_length  most jobs the queue may hold (0: no limit)
-- ARGV[4] dry_run     '1' to check only (write nothing)
-- ARGV[5] requests    one JSON array (one argument instead of ten per job: cheaper to send) of
--                     requests, each an array of jobs, each [id, type, payload (JSON text), retries,
--                     timeout, priority, run_at (epoch ms, 0: now), idempotency key ('' for none),
--                     fingerprint of type+payload, key TTL after the job ends (ms, 0: the default),
--                     and only when there is one, the trace context to keep with the job]
-- Returns per request {'conflict', job index (1-based), existing id} or {'full', current length}
--   or {'ok', id1, status1, created1, id2, ...}: created is 0 for a job that already existed.
-- Flags: none, so when Redis is out of memory it refuses the whole script before it runs: an
-- accepted job is stored whole or not at all, and the request gets a 503.
-- include: keys, clock, tally
local now = server_now()
local now_ms = now * 1000
local prefix = ARGV[2]
local max_length = tonumber(ARGV[3])
local length = nil  -- jobs the queue holds, counted once if a limit applies
local seen = {}  -- idempotency keys written by earlier requests of this call
local results = {}

local function check(jobs)
  local answers, fresh, mine = {}, 0, {}
  for i, j in ipairs(jobs) do
    local idem, fingerprint = j[8], j[9]
    if idem ~= '' then
      local existing = mine[idem] or seen[idem] or redis.call('GET', idem)
      if existing then
        local sep = string.find(existing, ' ', 1, true)
        local id, print = string.sub(existing, 1, sep - 1), string.sub(existing, sep + 1)
        if print ~= fingerprint then return {'conflict', i, id} end
        -- 'expired': the key outlived its job's record (idempotency_ttl > result_ttl)
        answers[i] = {id, redis.call('HGET', job_key(prefix, id), 'status')
          or (seen[idem] and STATUS.QUEUED) or 'expired'}
      else
        mine[idem] = j[1] .. ' ' .. fingerprint
      end
    end
    if not answers[i] then fresh = fresh + 1 end
  end
  if max_length > 0 and fresh > 0 then
    if length == nil then
      length = redis.call('ZCARD', KEYS[2])
      for level = 0, LEVELS - 1 do length = length + redis.call('XLEN', stream_key(prefix, level)) end
    end
    if length + fresh > max_length then return {'full', length} end
    length = length + fresh
  end
  for idem, value in pairs(mine) do seen[idem] = value end
  return {'ok', answers}
end

local function write(jobs, answers)
  local out = {'ok'}
  for i, j in ipairs(jobs) do
    if answers[i] then
      out[#out + 1] = answers[i][1]; out[#out + 1] = answers[i][2]; out[#out + 1] = 0
    else
      local id, level, run_at = j[1], j[6], j[7]
      local job = job_key(prefix, id)
      local status = STATUS.QUEUED
      if run_at > now_ms then status = STATUS.SCHEDULED end
      redis.call('HSET', job, 'id', id, 'type', j[2], 'queue', ARGV[1], 'payload', j[3], 'retries', j[4],
        'timeout', j[5], 'priority', level, 'attempts', 0, 'status', status, 'enqueued_at', now)
      if status == STATUS.SCHEDULED then
        redis.call('HSET', job, 'run_at', run_at / 1000)
        redis.call('ZADD', KEYS[2], run_at, id)
      else
        local entry = redis.call('XADD', stream_key(prefix, level), '*', 'id', id)
        redis.call('HSET', job, 'entry', entry, 'level', level)
      end
      if j[8] ~= '' then
        -- The key lives as long as the job, then its TTL runs from the job's end (set by finish).
        redis.call('SET', j[8], id .. ' ' .. j[9])
        redis.call('HSET', job, 'key', j[8])
        if j[10] > 0 then redis.call('HSET', job, 'key_ttl', j[10]) end
      end
      if j[11] then redis.call('HSET', job, 'trace', j[11]) end
      out[#out + 1] = id; out[#out + 1] = status; out[#out + 1] = 1
      count(TALLY.ENQUEUED)
    end
  end
  return out
end

for r, jobs in ipairs(cjson.decode(ARGV[5])) do
  local verdict = check(jobs)
  if verdict[1] ~= 'ok' then
    results[r] = verdict
  elseif ARGV[4] == '1' then
    results[r] = {'ok'}
  else
    results[r] = write(jobs, verdict[2])
  end
end
write_tally(KEYS[1])
return results
