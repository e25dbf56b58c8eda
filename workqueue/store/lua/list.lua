#!lua flags=no-writes
-- One page of a queue's jobs in one status, for GET /jobs: waiting jobs in the order they will run
-- (highest level first, oldest first within a level), running ones likewise, scheduled and retrying
-- ones by due time, ended ones (succeeded, cancelled, dead) newest first. The work is proportional
-- to the page: at most `limit` * 10 candidates are looked at per call, and the cursor says where
-- the next call goes on. Paging never skips or repeats a job: stream entry ids and history scores
-- only grow, and a job that changed status since is left out.
-- KEYS[1] scheduled  the queue's delayed jobs
-- KEYS[2] dead       the queue's dead set
-- ARGV[1] prefix     the queue's key prefix 'wq:{q}:'
-- ARGV[2] status     the status to list
-- ARGV[3] type       only jobs of this task type ('' for all)
-- ARGV[4] limit      most jobs in the page
-- ARGV[5] cursor     where the previous page stopped ('' for the first page)
-- Returns {next cursor ('' when there is no more), job id, job id, ...}.
-- Flags: no-writes: it only reads, so Redis runs it when out of memory (and on replicas).
-- include: keys, cursor
local prefix, status, wanted_type = ARGV[1], ARGV[2], ARGV[3]
local limit = tonumber(ARGV[4])
local budget = limit * 10  -- candidates looked at in this call
local found = {}

-- Keep `id` if its job is (still) in the listed status and of the wanted type.
local function take(id)
  budget = budget - 1
  local f = redis.call('HMGET', job_key(prefix, id), 'status', 'type')
  if f[1] == status and (wanted_type == '' or f[2] == wanted_type) then found[#found + 1] = id end
end

local function full() return #found >= limit or budget <= 0 end

local function streams(cursor, pending)
  -- cursor: '<level> <entry id>'; levels from the highest down, entries oldest first.
  local level, after = LEVELS - 1, nil
  if cursor ~= '' then
    local space = string.find(cursor, ' ', 1, true)
    level, after = tonumber(string.sub(cursor, 1, space - 1)), string.sub(cursor, space + 1)
  end
  while level >= 0 do
    local stream = stream_key(prefix, level)
    local first = after
    if not first and not pending and redis.call('EXISTS', stream) == 1 then first = last_delivered(stream) end
    local last = after or first
    -- A queue never used has no streams (and no group to ask).
    local exists = redis.call('EXISTS', stream) == 1
    while exists and not full() do
      local entries
      if pending then
        local from = '-'
        if last then from = '(' .. last end
        entries = redis.call('XPENDING', stream, GROUP, from, '+', math.min(budget, limit))
        for i, p in ipairs(entries) do
          entries[i] = {p[1], redis.call('XRANGE', stream, p[1], p[1])[1]}
        end
      else
        local raw = redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', math.min(budget, limit))
        entries = {}
        for i, e in ipairs(raw) do entries[i] = {e[1], e} end
      end
      if #entries == 0 then break end
      for _, e in ipairs(entries) do
        last = e[1]
        if e[2] then take(e[2][2][2]) end
        if full() then return level .. ' ' .. last end
      end
    end
    if full() then return level .. ' ' .. last end
    level, after = level - 1, nil
  end
  return ''
end

local function by_due(cursor)
  -- cursor: '<score> <id>' of the last job shown; members with one score are ordered by id.
  local min, last_score, last_id = '-inf', nil, nil
  if cursor ~= '' then
    local space = string.find(cursor, ' ', 1, true)
    last_score, last_id = string.sub(cursor, 1, space - 1), string.sub(cursor, space + 1)
    min = last_score
  end
  local offset = 0
  while not full() do
    local page = redis.call('ZRANGEBYSCORE', KEYS[1], min, '+inf', 'WITHSCORES', 'LIMIT', offset, limit)
    if #page == 0 then return '' end
    offset = offset + #page / 2
    for i = 1, #page, 2 do
      local id, score = page[i], page[i + 1]
      if not (last_score and tonumber(score) == tonumber(last_score) and id <= last_id) then
        take(id)
        last_score, last_id = score, id
        if full() then return score .. ' ' .. id end
      end
    end
  end
  return last_score .. ' ' .. last_id
end

local function newest_first(index, cursor)
  -- cursor: the score of the last job shown (scores are unique in a history).
  local max = '+inf'
  if cursor ~= '' then max = '(' .. cursor end
  while not full() do
    local page = redis.call('ZREVRANGEBYSCORE', index, max, '-inf', 'WITHSCORES', 'LIMIT', 0, limit)
    if #page == 0 then return '' end
    for i = 1, #page, 2 do
      take(page[i])
      max = '(' .. page[i + 1]
      if full() then return page[i + 1] end
    end
  end
  return string.sub(max, 2)
end

local next_cursor
if status == STATUS.QUEUED then
  next_cursor = streams(ARGV[5], false)
elseif status == STATUS.ACTIVE then
  next_cursor = streams(ARGV[5], true)
elseif status == STATUS.SCHEDULED or status == STATUS.RETRYING then
  next_cursor = by_due(ARGV[5])
elseif status == STATUS.DEAD then
  next_cursor = newest_first(KEYS[2], ARGV[5])
else
  next_cursor = newest_first(history_key(prefix, status), ARGV[5])
end
local out = {next_cursor}
for _, id in ipairs(found) do out[#out + 1] = id end
return out
