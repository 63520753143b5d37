-- Read one record with the server's clock.
-- KEYS: record   Returns {now, fields} (fields empty when absent).
local record = KEYS[1]
local now = server_now()
return {now, redis.call('HGETALL', record)}
