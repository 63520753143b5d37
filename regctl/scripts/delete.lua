-- Remove a registration and its index entry; a replay of the same call (lost reply)
-- finds the call's marker and reports the deletion it made.
-- KEYS: record, index, marker   ARGV: digest, replay_ms   Returns 1 if deleted, else 0.
allowed({{'zrem', KEYS[2], 'm'}, {'del', KEYS[1]}, {'set', KEYS[3], 'v'}})
if redis.call('EXISTS', KEYS[3]) == 1 then return 1 end
redis.call('ZREM', KEYS[2], ARGV[1])
local deleted = redis.call('DEL', KEYS[1])
if deleted == 1 then redis.call('SET', KEYS[3], 1, 'PX', tonumber(ARGV[2])) end
return deleted
