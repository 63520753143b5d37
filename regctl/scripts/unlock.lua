-- Clear a lockout: attempts back to zero. KEYS: record. Returns 1, or 0 when absent.
allowed({{'hset', KEYS[1], 'f', 'v'}})
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'l', 0, 'a', 0)
return 1
