-- Put records that lost their index entry (an evicted or damaged index) back in it.
-- KEYS: index, then record keys of the same bucket   ARGV: index_grace_ms, then the
--       records' digests in KEYS order
-- Returns the number of entries restored.
local index_grace_ms = tonumber(ARGV[1])
local index = KEYS[1]
allowed({{'zadd', index, '1', 'm'}, {'pexpireat', index, '1'}})
local now = server_now()
local restored = 0
for i = 2, #KEYS do
  local record, digest = KEYS[i], ARGV[i]
  -- (a key of another type, or a lifetime codec.decode would refuse, is no record of
  -- regctl's to index: doctor names it)
  local expires = whole(redis.pcall('HGET', record, F.expires_at))
  if expires and expires > now and not redis.call('ZSCORE', index, digest) then
    redis.call('ZADD', index, expires, digest)
    extend_index(index, expires, index_grace_ms, now)
    restored = restored + 1
  end
end
return restored
