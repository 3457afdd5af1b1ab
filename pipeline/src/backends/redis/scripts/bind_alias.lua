-- Binds an alias to a job unless it is bound to another job whose record still exists.
-- KEYS[1] alias key, KEYS[2] the job's alias set, KEYS[3] the job's record hash
-- ARGV[1] job id, ARGV[2] record key prefix, ARGV[3] alias
-- Returns the id the alias is bound to afterwards.
local bound = redis.call('GET', KEYS[1])
if bound and bound ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. bound) == 1 then
  return bound
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[3])
-- A binding lives as long as the record: copy a finished record's safety-net TTL.
local ttl = redis.call('TTL', KEYS[3])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
return ARGV[1]
