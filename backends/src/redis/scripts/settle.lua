-- Acts on a claimed message only if the claim is still this consumer's and the same
-- delivery (a consumer whose message was reclaimed holds a stale receipt and must not
-- ack, retry or extend the new claim).
-- KEYS[1] stage stream, KEYS[2] delayed zset, KEYS[3] dead-letter stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] entry id, ARGV[4] delivery count, ARGV[5] action:
--   touch                                 restart the visibility timeout (XCLAIM JUSTID keeps the count)
--   ack                                   done: XACK + XDEL
--   retry  ARGV[6] delay ms, ARGV[7] attempts so far, ARGV[8] job id, ARGV[9] traceparent
--   dead   ARGV[6] stage, ARGV[7] attempt, ARGV[8] job id, ARGV[9] traceparent, ARGV[10] code, ARGV[11] message
-- Returns 1 when done, 0 when the claim is not this delivery's any more.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
local claim = pending[1]
if not claim or claim[2] ~= ARGV[2] or tostring(claim[4]) ~= ARGV[4] then
  return 0
end
local action = ARGV[5]
if action == 'touch' then
  redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
  return 1
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
if action == 'retry' then
  local delay = tonumber(ARGV[6])
  if delay <= 0 then
    if ARGV[9] ~= '' then
      redis.call('XADD', KEYS[1], '*', 'job_id', ARGV[8], 'attempts', ARGV[7], 'traceparent', ARGV[9])
    else
      redis.call('XADD', KEYS[1], '*', 'job_id', ARGV[8], 'attempts', ARGV[7])
    end
  else
    local now = redis.call('TIME')
    local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    local member = ARGV[7] .. '|' .. ARGV[3] .. '|' .. ARGV[8] .. '|' .. ARGV[9]
    redis.call('ZADD', KEYS[2], string.format('%d', now_ms + delay), member)
  end
elseif action == 'dead' then
  local now = redis.call('TIME')
  local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('XADD', KEYS[3], '*', 'stage', ARGV[6], 'attempt', ARGV[7], 'job_id', ARGV[8],
    'traceparent', ARGV[9], 'code', ARGV[10], 'message', ARGV[11], 'at_ms', string.format('%d', now_ms))
end
return 1
