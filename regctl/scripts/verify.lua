-- Check a code and, when right, consume the record, in one step.
-- The attempt is counted before comparing; a success leaves a short-lived marker
-- so a replay of the same call (same token) gets the same answer.
-- KEYS: record, index, marker   ARGV: digest, candidate_hash, max_attempts, replay_ms,
--                                funnel_keep_ms
-- Returns {status, now, attempts_left, record_json}
local now = server_now()
local replay = redis.call('GET', KEYS[3])
if replay then return {'verified', now, 0, replay} end
if redis.call('EXISTS', KEYS[1]) == 0 then return {'not_found', now, 0, ''} end
local max = tonumber(ARGV[3])
local f = redis.call('HMGET', KEYS[1], 'l', 'a', 'ce', 'ch')
if f[1] == '1' then return {'locked', now, 0, ''} end
if now >= tonumber(f[3]) then
  return {'code_expired', now, math.max(0, max - tonumber(f[2])), ''}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'a', 1)
if attempts > max then
  redis.call('HSET', KEYS[1], 'l', 1)
  funnel(KEYS[1], 'locked', 1, tonumber(ARGV[5]), now)
  return {'locked', now, 0, ''}
end
if f[4] ~= ARGV[2] then
  if attempts >= max then
    redis.call('HSET', KEYS[1], 'l', 1)
    funnel(KEYS[1], 'locked', 1, tonumber(ARGV[5]), now)
  end
  return {'invalid_code', now, max - attempts, ''}
end
local all = redis.call('HGETALL', KEYS[1])
local kept = {}
for i = 1, #all, 2 do
  local k = all[i]
  if k ~= 'ch' and k ~= 'at' and k ~= 'rt' then
    kept[#kept + 1] = k
    kept[#kept + 1] = all[i + 1]
  end
end
local record = cjson.encode(kept)
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], record, 'PX', tonumber(ARGV[4]))
funnel(KEYS[1], 'verified', 1, tonumber(ARGV[5]), now)
return {'verified', now, max - attempts, record}
