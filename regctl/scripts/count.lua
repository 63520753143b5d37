-- Live entries of one bucket, and those expiring within ARGV[1] ms, at server time.
-- KEYS: index   Returns {now, live, expiring_soon}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local after = '(' .. now
return {now, redis.call('ZCOUNT', KEYS[1], after, '+inf'),
        redis.call('ZCOUNT', KEYS[1], after, now + tonumber(ARGV[1]))}
