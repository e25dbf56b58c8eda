-- How long finished things are kept: one ARGV, the JSON array [result TTL (ms), dead TTL (ms), most
-- dead jobs kept, idempotency key TTL after its job ends (ms), most ids kept per history status].
local function retention(arg)
  local r = cjson.decode(arg)
  return {result_ttl = r[1], dead_ttl = r[2], dead_max = r[3], key_ttl = r[4], history_max = r[5]}
end

-- A job that ended: its record expires after `ttl`, and its idempotency key (`key`, with the TTL
-- `key_ttl` the job asked for, else the configured one) that long after the job's end.
local function expire_ended(job, ttl, key, key_ttl, r)
  redis.call('PEXPIRE', job, ttl)
  if key then redis.call('PEXPIRE', key, key_ttl or r.key_ttl) end
end
