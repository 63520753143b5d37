-- Remove chosen entries of one bucket if they are still what the caller saw.
-- KEYS: index, the record of each chosen digest (in ARGV's order)
-- mode "orphan": ARGV: mode, digest...; drop index entries whose record is gone.
-- mode "match":  ARGV: mode, digest, created_at, ...; delete the registration only if
--                it is the same one (same creation time) the caller selected.
-- Returns the number removed.
allowed({{'del', KEYS[1]}, {'zrem', KEYS[1], 'm'}})
local removed = 0
if ARGV[1] == 'orphan' then
  for i = 2, #ARGV do
    if redis.call('EXISTS', KEYS[i]) == 0 then
      removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
    end
  end
else
  for i = 2, #ARGV, 2 do
    local record = KEYS[i / 2 + 1]
    if redis.call('HGET', record, 'c') == ARGV[i + 1] then
      redis.call('DEL', record)
      redis.call('ZREM', KEYS[1], ARGV[i])
      removed = removed + 1
    end
  end
end
return removed
