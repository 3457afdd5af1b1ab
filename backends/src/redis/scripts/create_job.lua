-- Creates a job record unless the id exists, and indexes it.
-- KEYS[1] record hash, KEYS[2] tenant index zset, KEYS[3] stale zset, KEYS[4] expired zset,
-- KEYS[5] creation sequence counter, KEYS[6] the job's alias set, KEYS[7] the tenant's set of
-- unfinished jobs
-- ARGV[1] id, ARGV[2] json, ARGV[3] state, ARGV[4] attempt, ARGV[5] tenant, ARGV[6] created_ms,
-- ARGV[7] updated_ms, ARGV[8] "1" if the state is terminal, ARGV[9] safety-net TTL in seconds,
-- ARGV[10] alias key prefix
-- Returns 1 when created, 0 when the id exists.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'json', ARGV[2], 'state', ARGV[3], 'attempt', ARGV[4],
  'tenant', ARGV[5], 'created_ms', ARGV[6], 'updated_ms', ARGV[7])
-- Score = created_ms followed by three digits of a sequence, so jobs created in the same
-- millisecond still list newest first (an integer below 2^53: exact as a double).
local seq = redis.call('INCR', KEYS[5]) % 1000
redis.call('ZADD', KEYS[2], ARGV[6] .. string.format('%03d', seq), ARGV[1])
local terminal = ARGV[8] == '1'
if terminal then
  redis.call('ZADD', KEYS[4], ARGV[7], ARGV[1])
  redis.call('EXPIRE', KEYS[1], ARGV[9])
else
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1])
  redis.call('SADD', KEYS[7], ARGV[1])
end
-- Aliases bound before the record existed now live as long as it does.
for _, alias in ipairs(redis.call('SMEMBERS', KEYS[6])) do
  local key = ARGV[10] .. alias
  if redis.call('GET', key) == ARGV[1] then
    if terminal then
      redis.call('EXPIRE', key, ARGV[9])
    else
      redis.call('PERSIST', key)
    end
  end
end
if terminal then
  redis.call('EXPIRE', KEYS[6], ARGV[9])
else
  redis.call('PERSIST', KEYS[6])
end
return 1
