-- Restore an exported registration with its remaining lifetime (server clock decides).
-- KEYS: record, index   ARGV: digest, replace (1/0), dry_run (1/0), expires_at,
--                              index_grace_ms, max_ahead_ms, clock_skew_ms, then the
--                              record's field/value pairs
-- Returns "restored", "reset" (replaced one with more attempts or resends used, or
-- locked), "exists", "expired" or "invalid" (times the server's clock cannot accept).
allowed({{'del', KEYS[1]}, {'hset', KEYS[1], 'f', 'v'}, {'pexpireat', KEYS[1], '1'},
  {'zadd', KEYS[2], '1', 'm'}, {'pexpireat', KEYS[2], '1'}})
local now = server_now()
local expires = tonumber(ARGV[4])
local max_ahead = tonumber(ARGV[6])
local fields, new = {}, {}
for i = 8, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  new[ARGV[i]] = ARGV[i + 1]
end
-- Checked before the first write: no record may exist without its TTL and index entry,
-- nor be created or sent in the future (beyond a small clock skew).
local skew = tonumber(ARGV[7])
if not expires or expires ~= math.floor(expires) or expires > now + max_ahead
    or tonumber(new['c']) > now + skew or tonumber(new['s']) > now + skew then
  return 'invalid'
end
if expires <= now then return 'expired' end
local old = redis.call('HMGET', KEYS[1], 'l', 'a', 'r')
if ARGV[2] ~= '1' and old[1] then return 'exists' end
local status = 'restored'
if old[1] and ((old[1] == '1' and new['l'] ~= '1')
    or tonumber(old[2]) > tonumber(new['a']) or tonumber(old[3]) > tonumber(new['r'])) then
  status = 'reset'  -- a replace that gives back guesses or resends: the caller audits it
end
if ARGV[3] == '1' then return status end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIREAT', KEYS[1], expires)
redis.call('ZADD', KEYS[2], expires, ARGV[1])
extend_index(KEYS[2], expires, tonumber(ARGV[5]), now)
return status
