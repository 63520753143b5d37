-- Live entries of one bucket, and those expiring within `soon_ms`, at server time.
-- KEYS: index   Returns {now, live, expiring_soon}
local soon_ms = tonumber(ARGV[1])
local index = KEYS[1]
local now = server_now()
local after = '(' .. now
return {now, redis.call('ZCOUNT', index, after, '+inf'),
        redis.call('ZCOUNT', index, after, now + soon_ms)}
