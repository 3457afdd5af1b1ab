-- Moves retried messages whose delay has passed from the delayed set to the stage stream.
-- KEYS[1] delayed zset (score = due time in ms, member = "attempts|entry_id|job_id|traceparent")
-- KEYS[2] stage stream
-- ARGV[1] most messages to move
-- Returns {moved, ms until the next one is due (-1: none)}. Atomic, so two claimers never
-- move the same message twice.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now_ms), 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local attempts, _entry, job_id, traceparent = string.match(member, '^(%d+)|([^|]*)|([^|]*)|(.*)$')
  if job_id then
    if traceparent ~= '' then
      redis.call('XADD', KEYS[2], '*', 'job_id', job_id, 'attempts', attempts, 'traceparent', traceparent)
    else
      redis.call('XADD', KEYS[2], '*', 'job_id', job_id, 'attempts', attempts)
    end
  end
end
local next_due = -1
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] then
  next_due = math.max(0, tonumber(first[2]) - now_ms)
end
return {#due, next_due}
