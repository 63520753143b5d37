-- Check a code and, when right, consume the record, in one step.
-- The attempt is counted before comparing. Every answer that changed something is
-- kept under the call's marker (named by identity and token), so a replay of the
-- same call with the same code gets the same answer and counts no second attempt;
-- the same token with another code is a new call.
-- KEYS: record, index, marker, funnel x3   ARGV: digest, candidate_hash, max_attempts,
--                                           replay_ms, funnel_keep_ms, client_day
-- Returns {status, now, attempts_left, record_json}
allowed({{'hincrby', KEYS[1], 'f', '1'}, {'hset', KEYS[1], 'f', 'v'}, {'del', KEYS[1]},
  {'zrem', KEYS[2], 'm'}, {'set', KEYS[3], 'v'}, {'pexpireat', KEYS[1], '1'}})
local now = server_now()
local digest, candidate = ARGV[1], ARGV[2]
local max, replay_ms, keep_ms = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local client_day = tonumber(ARGV[6])

local first = redis.call('GET', KEYS[3])
if first then
  first = cjson.decode(first)
  if first[1] == candidate then return {first[2], now, first[3], first[4]} end
end

local function answer(status, left, record)
  redis.call('SET', KEYS[3], cjson.encode({candidate, status, left, record}), 'PX', replay_ms)
  return {status, now, left, record}
end

local function lock()
  redis.call('HSET', KEYS[1], 'l', 1)
  funnel('locked', 1, keep_ms, client_day, now)
end

if redis.call('EXISTS', KEYS[1]) == 0 then return {'not_found', now, 0, ''} end
local f = redis.call('HMGET', KEYS[1], 'l', 'a', 'ce', 'ch')
if f[1] == '1' then return {'locked', now, 0, ''} end
if now >= tonumber(f[3]) then
  return {'code_expired', now, math.max(0, max - tonumber(f[2])), ''}
end
-- A code hash is fingerprint:hmac (older ones: hmac). Another secret's code is not a
-- wrong guess: say so and count nothing.
local stored_fp, stored_mac = string.match(f[4], '^(%x+):(%x+)$')
local mine_fp, mine_mac = string.match(candidate, '^(%x+):(%x+)$')
if stored_fp == nil then stored_mac = f[4] end
if mine_fp == nil then mine_mac = candidate end
if stored_fp and stored_fp ~= mine_fp then
  return {'wrong_secret', now, max - tonumber(f[2]), ''}
end
local attempts = redis.call('HINCRBY', KEYS[1], 'a', 1)
if attempts > max then
  lock()
  return answer('locked', 0, '')
end
if stored_mac ~= mine_mac then
  if attempts >= max then lock() end
  return answer('invalid_code', max - attempts, '')
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
redis.call('ZREM', KEYS[2], digest)
funnel('verified', 1, keep_ms, client_day, now)
return answer('verified', max - attempts, record)
