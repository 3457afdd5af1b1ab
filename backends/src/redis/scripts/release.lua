-- Gives a lease back if the holder still has it.
-- KEYS[1] lease key; ARGV[1] holder
-- Returns 1 when it was released, 0 when someone else (or nobody) holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
