-- Read one record with the server's clock.
-- KEYS: record   Returns {now, fields} (fields empty when absent).
local now = server_now()
return {now, redis.call('HGETALL', KEYS[1])}
