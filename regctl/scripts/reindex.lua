-- Put records that lost their index entry (an evicted or damaged index) back in it.
-- KEYS: index, then record keys of the same bucket   ARGV: index_grace_ms, then the
--       records' digests in KEYS order
-- Returns the number of entries restored.
allowed({{'zadd', KEYS[1], '1', 'm'}, {'pexpireat', KEYS[1], '1'}})
local now = server_now()
local grace = tonumber(ARGV[1])
local restored = 0
for i = 2, #KEYS do
  local digest = ARGV[i]
  local expires = tonumber(redis.call('HGET', KEYS[i], 'e'))
  if expires and expires > now and not redis.call('ZSCORE', KEYS[1], digest) then
    redis.call('ZADD', KEYS[1], expires, digest)
    extend_index(KEYS[1], expires, grace, now)
    restored = restored + 1
  end
end
return restored
