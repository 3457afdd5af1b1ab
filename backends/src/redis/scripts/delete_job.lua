-- Deletes a job record, its index entries and every alias still bound to it.
-- KEYS[1] record hash, KEYS[2] the job's alias set, KEYS[3] stale zset, KEYS[4] expired zset
-- ARGV[1] id, ARGV[2] alias key prefix, ARGV[3] tenant key prefix, ARGV[4] tenant index suffix,
-- ARGV[5] suffix of the tenant's set of unfinished jobs
local tenant = redis.call('HGET', KEYS[1], 'tenant')
if tenant then
  redis.call('ZREM', ARGV[3] .. tenant .. ARGV[4], ARGV[1])
  redis.call('SREM', ARGV[3] .. tenant .. ARGV[5], ARGV[1])
end
for _, alias in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local key = ARGV[2] .. alias
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
  end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 1
