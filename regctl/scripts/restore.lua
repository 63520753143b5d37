-- Restore an exported registration with its remaining lifetime (server clock decides).
-- KEYS: record, index   ARGV: digest, replace (1/0), dry_run (1/0), expires_at,
--                              index_grace_ms, max_ahead_ms, then field/value pairs
-- Returns "restored", "unlocked" (restored over a locked one, clearing its lock),
-- "exists", "expired" or "invalid" (an expiry the server's clock cannot accept).
allowed({{'del', KEYS[1]}, {'hset', KEYS[1], 'f', 'v'}, {'pexpireat', KEYS[1], '1'},
  {'zadd', KEYS[2], '1', 'm'}, {'pexpireat', KEYS[2], '1'}})
local now = server_now()
local expires = tonumber(ARGV[4])
local max_ahead = tonumber(ARGV[6])
-- Checked before the first write: no record may exist without its TTL and index entry.
if not expires or expires ~= math.floor(expires) or expires > now + max_ahead then
  return 'invalid'
end
if expires <= now then return 'expired' end
local existing = redis.call('HGET', KEYS[1], 'l')
if ARGV[2] ~= '1' and existing then return 'exists' end
local fields = {}
for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
local status = 'restored'
for i = 1, #fields, 2 do
  if fields[i] == 'l' and existing == '1' and fields[i + 1] ~= '1' then status = 'unlocked' end
end
if ARGV[3] == '1' then return status end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIREAT', KEYS[1], expires)
redis.call('ZADD', KEYS[2], expires, ARGV[1])
extend_index(KEYS[2], expires, tonumber(ARGV[5]), now)
return status
