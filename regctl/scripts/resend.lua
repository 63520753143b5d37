-- Replace the code: the old one is dead at once; cooldown and cap checked here.
-- Attempts and the record's TTL are left as they are.
-- KEYS: record, funnel x3   ARGV: code_hash, code_lifetime_ms, cooldown_ms, max_resends,
--                             token, funnel_keep_ms, client_day
-- Returns {status, now, detail}: ok (fields) | not_found | locked | resend_limit | cooldown (wait ms)
allowed({{'hset', KEYS[1], 'f', 'v'}, {'hincrby', KEYS[1], 'f', '1'}, {'pexpireat', KEYS[1], '1'}})
local now = server_now()
if redis.call('EXISTS', KEYS[1]) == 0 then return {'not_found', now, {}} end
local f = redis.call('HMGET', KEYS[1], 'l', 'r', 's', 'rt')
if f[4] == ARGV[5] then return {'ok', now, redis.call('HGETALL', KEYS[1])} end
if f[1] == '1' then return {'locked', now, {}} end
if tonumber(f[2]) >= tonumber(ARGV[4]) then return {'resend_limit', now, {}} end
local wait = tonumber(f[3]) + tonumber(ARGV[3]) - now
if wait > 0 then return {'cooldown', now, wait} end
redis.call('HSET', KEYS[1], 'ch', ARGV[1], 'ce', now + tonumber(ARGV[2]), 's', now, 'rt', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'r', 1)
funnel('sent', 1, tonumber(ARGV[6]), tonumber(ARGV[7]), now)
return {'ok', now, redis.call('HGETALL', KEYS[1])}
