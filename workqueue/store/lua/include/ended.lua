-- include: keys, retention
-- A job that ended (succeeded, cancelled, dead): its record and idempotency key get their TTLs; its
-- id goes into the queue's history of that status (what GET /jobs lists, newest first: at most
-- history_max ids, none older than the records they name; the dead set is the dead jobs' history)
-- and into the queue's `ended` stream, which GET /jobs/{id}?wait watches instead of polling each job.
-- Call `write_endings` once at the end of a script that ended any job.
local endings = {}  -- status -> {score, id, score, id, ...}
local ended_ids = {}

local function ended(job, id, status, now, ttl, key, key_ttl, r)
  expire_ended(job, ttl, key, key_ttl, r)
  if status ~= STATUS.DEAD then
    local members = endings[status]
    if not members then members = {}; endings[status] = members end
    -- A score of its own for each, so paging the history by score loses none.
    members[#members + 1] = now + (#members / 2) / 1000000
    members[#members + 1] = id
  end
  ended_ids[#ended_ids + 1] = id
end

local function write_endings(prefix, now, r)
  for status, members in pairs(endings) do
    local index = history_key(prefix, status)
    for first = 1, #members, 1000 do  -- unpack() of a very long list would overflow Lua's stack
      redis.call('ZADD', index, unpack(members, first, math.min(first + 999, #members)))
    end
    redis.call('ZREMRANGEBYRANK', index, 0, -r.history_max - 1)
    redis.call('ZREMRANGEBYSCORE', index, '-inf', now - r.result_ttl / 1000)
  end
  if #ended_ids > 0 then
    redis.call('XADD', prefix .. 'ended', 'MAXLEN', '~', 1000, '*', 'ids', table.concat(ended_ids, ','))
  end
end
