-- Live entries of one bucket, and those expiring within ARGV[1] ms, at server time.
-- KEYS: index   Returns {now, live, expiring_soon}
local now = server_now()
local after = '(' .. now
return {now, redis.call('ZCOUNT', KEYS[1], after, '+inf'),
        redis.call('ZCOUNT', KEYS[1], after, now + tonumber(ARGV[1]))}
