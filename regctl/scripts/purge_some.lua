-- Remove chosen entries of one bucket if they are still what the caller saw.
-- KEYS: index, the record of each chosen digest (in ARGV's order)
-- mode "orphan": ARGV: mode, digest...; drop index entries whose record is gone.
-- mode "match":  ARGV: mode, digest, created_at, ...; delete the registration only if
--                it is the same one (same creation time) the caller selected.
-- Returns the number removed.
local mode = ARGV[1]
local index = KEYS[1]
allowed({{'del', index}, {'zrem', index, 'm'}})
local removed = 0
if mode == 'orphan' then
  for i = 2, #ARGV do
    local digest, record = ARGV[i], KEYS[i]
    if redis.call('EXISTS', record) == 0 then
      removed = removed + redis.call('ZREM', index, digest)
    end
  end
else
  for i = 2, #ARGV, 2 do
    local digest, created_at, record = ARGV[i], ARGV[i + 1], KEYS[i / 2 + 1]
    if redis.call('HGET', record, F.created_at) == created_at then
      redis.call('DEL', record)
      redis.call('ZREM', index, digest)
      removed = removed + 1
    end
  end
end
return removed
