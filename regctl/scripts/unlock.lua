-- Clear a lockout: attempts back to zero. KEYS: record. Returns 1, or 0 when absent.
local record = KEYS[1]
allowed({{'hset', record, 'f', 'v'}})
if redis.call('EXISTS', record) == 0 then return 0 end
redis.call('HSET', record, F.locked, 0, F.attempts, 0)
return 1
