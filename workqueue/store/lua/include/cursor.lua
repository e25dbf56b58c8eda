-- The consumer group's last delivered entry id on a stream ('0-0' before any): waiting jobs are the
-- entries after it.
local function last_delivered(stream)
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local fields = {}
    for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
    if fields['name'] == GROUP then return fields['last-delivered-id'] end
  end
  return '0-0'
end
