-- Remove a registration and its index entry; a replay of the same call (lost reply)
-- finds the call's marker and gets the first answer (so it never deletes a record
-- added since).
-- KEYS: record, index, marker, gone   Returns 1 if deleted, else 0.
local digest, replay_ms = ARGV[1], tonumber(ARGV[2])
local record, index, marker, gone = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
allowed({{'zrem', index, 'm'}, {'del', record}, {'set', marker, 'v'},
  {'hset', gone, 'f', 'v'}, {'pexpire', gone, '1'}})
local first = redis.call('GET', marker)
if first then return tonumber(first) end
leave_gone(gone, record, replay_ms)
redis.call('ZREM', index, digest)
local deleted = redis.call('DEL', record)
redis.call('SET', marker, deleted, 'PX', replay_ms)
return deleted
