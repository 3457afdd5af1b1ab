-- Takes a lease, or renews it for its holder.
-- KEYS[1] lease key; ARGV[1] holder, ARGV[2] time to live in ms
-- Returns 1 when the holder holds it afterwards, 0 while another holder does.
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
