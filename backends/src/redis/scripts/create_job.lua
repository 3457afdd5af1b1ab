-- Creates a job record unless the id exists, indexes it, binds its aliases and, given a stage
-- stream, queues it: one atomic step, so a job is either created and queued or not at all.
-- KEYS[1] record hash, KEYS[2] tenant index zset, KEYS[3] stale zset, KEYS[4] expired zset,
-- KEYS[5] creation sequence counter, KEYS[6] the job's alias set, KEYS[7] the tenant's set of
-- unfinished jobs, KEYS[8] (optional) the stream of the stage to queue it on
-- ARGV[1] id, ARGV[2] json, ARGV[3] state, ARGV[4] attempt, ARGV[5] tenant, ARGV[6] created_ms,
-- ARGV[7] updated_ms, ARGV[8] "1" if the state is terminal, ARGV[9] safety-net TTL in seconds,
-- ARGV[10] alias key prefix, ARGV[11] record key prefix, ARGV[12] traceparent ('' for none),
-- ARGV[13] "1" if a repeat of this call counts as created, ARGV[14..] aliases to bind
-- Returns {'created'}; {'existing', id} when an alias is bound to another job whose record
-- exists (nothing is written); {'exists'} when the id exists. With ARGV[13] = "1" a repeat of
-- a call that already ran (same id, same record) answers {'created'}: safe to retry.
for i = 14, #ARGV do
  local bound = redis.call('GET', ARGV[10] .. ARGV[i])
  if bound and bound ~= ARGV[1] and redis.call('EXISTS', ARGV[11] .. bound) == 1 then
    return {'existing', bound}
  end
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[13] == '1' and redis.call('HGET', KEYS[1], 'json') == ARGV[2] then
    return {'created'}
  end
  return {'exists'}
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
-- A binding to a job whose record is gone (or to one never created) is free again.
for i = 14, #ARGV do
  redis.call('SET', ARGV[10] .. ARGV[i], ARGV[1])
  redis.call('SADD', KEYS[6], ARGV[i])
end
-- Aliases now live as long as the record does (including any bound before it existed).
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
if KEYS[8] then
  -- The entry a queue's enqueue writes (queue.rs): first delivery, attempts before it 0.
  if ARGV[12] ~= '' then
    redis.call('XADD', KEYS[8], '*', 'job_id', ARGV[1], 'attempts', 0, 'traceparent', ARGV[12])
  else
    redis.call('XADD', KEYS[8], '*', 'job_id', ARGV[1], 'attempts', 0)
  end
end
return {'created'}
