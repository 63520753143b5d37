-- Restore an exported registration with its remaining lifetime (server clock decides).
-- KEYS: record, index   ARGV: digest, replace (1/0), dry_run (1/0), expires_at,
--                              index_grace_ms, then the record's field/value pairs
-- Returns "restored", "exists" or "expired".
allowed({{'del', KEYS[1]}, {'hset', KEYS[1], 'f', 'v'}, {'pexpireat', KEYS[1], '1'},
  {'zadd', KEYS[2], '1', 'm'}, {'pexpireat', KEYS[2], '1'}})
local now = server_now()
local expires = tonumber(ARGV[4])
if expires <= now then return 'expired' end
if ARGV[2] ~= '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 'exists' end
if ARGV[3] == '1' then return 'restored' end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('PEXPIREAT', KEYS[1], expires)
redis.call('ZADD', KEYS[2], expires, ARGV[1])
extend_index(KEYS[2], expires, tonumber(ARGV[5]), now)
return 'restored'
