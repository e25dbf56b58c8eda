-- Counters are summed in the script and written once per field at its end (HINCRBY per job would
-- cost a command each): `count(TALLY.X)` for the queue's total, `count_type(TALLY.X, type)` for
-- the per task type counter 'x|type' behind workqueue_jobs_total.
local tally = {}
local function count(field, n) tally[field] = (tally[field] or 0) + (n or 1) end
local function count_type(field, task_type, n) count(field .. '|' .. (task_type or '?'), n) end
local function write_tally(stats)
  for field, n in pairs(tally) do
    if n ~= 0 then redis.call('HINCRBY', stats, field, n) end
  end
end
