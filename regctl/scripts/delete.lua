-- Remove a registration and its index entry; a replay of the same call (lost reply)
-- finds the call's marker and gets the first answer (so it never deletes a record
-- added since).
-- KEYS: record, index, marker   ARGV: digest, replay_ms   Returns 1 if deleted, else 0.
allowed({{'zrem', KEYS[2], 'm'}, {'del', KEYS[1]}, {'set', KEYS[3], 'v'}})
local first = redis.call('GET', KEYS[3])
if first then return tonumber(first) end
redis.call('ZREM', KEYS[2], ARGV[1])
local deleted = redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[3], deleted, 'PX', tonumber(ARGV[2]))
return deleted
