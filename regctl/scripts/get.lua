-- Read one record with the server's clock.
-- KEYS: record   Returns {now, fields} (fields empty when absent).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return {now, redis.call('HGETALL', KEYS[1])}
