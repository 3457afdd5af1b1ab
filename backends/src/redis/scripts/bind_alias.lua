-- Binds an alias to a job unless it is bound already.
-- KEYS[1] alias key, KEYS[2] the job's alias set, KEYS[3] the job's record hash
-- ARGV[1] job id, ARGV[2] alias, ARGV[3] TTL in seconds of a binding made before its record
-- Returns the id the alias is bound to afterwards.
--
-- An alias key exists only while it means something: deleting a record deletes its aliases,
-- a finished record's aliases expire with it, and a binding made before its record exists
-- (ingest binds an Idempotency-Key, then creates the job) expires after ARGV[3] unless the
-- record is created meanwhile (create_job.lua makes it permanent). So an existing key is a
-- binding, to a record or to one being created, and a concurrent request loses to it.
local bound = redis.call('GET', KEYS[1])
if bound and bound ~= ARGV[1] then
  return bound
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
local ttl = redis.call('TTL', KEYS[3])
if ttl == -2 then
  ttl = tonumber(ARGV[3])
end
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
end
return ARGV[1]
