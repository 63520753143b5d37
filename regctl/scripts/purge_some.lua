-- Remove chosen entries of one bucket if they are still what the caller saw.
-- mode "orphan": ARGV[3..] digests; drop index entries whose record is gone.
-- mode "match":  ARGV[3..] digest, created_at pairs; delete the registration only if
--                it is the same one (same creation time) the caller selected.
-- KEYS: index   ARGV: record_base, mode, ...   Returns the number removed.
allowed({{'del', ARGV[1] .. 'x'}, {'zrem', KEYS[1], 'm'}})
local removed = 0
if ARGV[2] == 'orphan' then
  for i = 3, #ARGV do
    if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then
      removed = removed + redis.call('ZREM', KEYS[1], ARGV[i])
    end
  end
else
  for i = 3, #ARGV, 2 do
    local key = ARGV[1] .. ARGV[i]
    if redis.call('HGET', key, 'c') == ARGV[i + 1] then
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[1], ARGV[i])
      removed = removed + 1
    end
  end
end
return removed
