-- Takes over the oldest message whose claim passed the visibility timeout (XAUTOCLAIM bumps
-- its delivery count) and returns it with that count, in one step.
-- KEYS[1] stage stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] visibility timeout in ms, ARGV[4] most PEL pages to scan
-- Returns {entry_id, {field, value, ...}, delivery_count} or false.
local cursor = '0-0'
for _ = 1, tonumber(ARGV[4]) do
  local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor, 'COUNT', 1)
  cursor = reply[1]
  local entry = reply[2][1]
  -- An entry deleted from the stream while pending comes back as nil (Redis 6.2); Redis 7
  -- drops it from the PEL and lists it apart.
  if entry and entry[2] then
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
    local count = 1
    if pending[1] then
      count = pending[1][4]
    end
    return {entry[1], entry[2], count}
  end
  if cursor == '0-0' then
    return false
  end
end
return false
