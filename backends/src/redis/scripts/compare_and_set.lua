-- Replaces a job record only if it is still in the expected state and attempt.
-- KEYS[1] record hash, KEYS[2] stale zset, KEYS[3] expired zset, KEYS[4] the job's alias set,
-- KEYS[5] the tenant's set of unfinished jobs
-- ARGV[1] expected state, ARGV[2] expected attempt, ARGV[3] json, ARGV[4] state, ARGV[5] attempt,
-- ARGV[6] updated_ms, ARGV[7] "1" if the new state is terminal, ARGV[8] id,
-- ARGV[9] safety-net TTL in seconds, ARGV[10] alias key prefix
-- Returns {"ok"}, {"not_found"} or {"conflict", state, attempt}.
local current = redis.call('HMGET', KEYS[1], 'state', 'attempt')
if not current[1] then
  return {'not_found'}
end
if current[1] ~= ARGV[1] or current[2] ~= ARGV[2] then
  return {'conflict', current[1], current[2] or ''}
end
redis.call('HSET', KEYS[1], 'json', ARGV[3], 'state', ARGV[4], 'attempt', ARGV[5], 'updated_ms', ARGV[6])
if ARGV[7] == '1' then
  redis.call('ZREM', KEYS[2], ARGV[8])
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[8])
  redis.call('SREM', KEYS[5], ARGV[8])
  -- The janitor deletes the record after the retention; the TTL only catches what it missed.
  redis.call('EXPIRE', KEYS[1], ARGV[9])
  for _, alias in ipairs(redis.call('SMEMBERS', KEYS[4])) do
    redis.call('EXPIRE', ARGV[10] .. alias, ARGV[9])
  end
  redis.call('EXPIRE', KEYS[4], ARGV[9])
else
  redis.call('ZREM', KEYS[3], ARGV[8])
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[8])
  redis.call('SADD', KEYS[5], ARGV[8])
end
return {'ok'}
