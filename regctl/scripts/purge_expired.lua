-- Remove up to ARGV[2] index entries whose lifetime is over (and their records, should
-- any remain), so each call is short; the caller loops until fewer come back.
-- KEYS: index   ARGV: record_base, batch, dry_run (1 = only count)
-- Returns {now, removed_or_counted}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[3] == '1' then return {now, redis.call('ZCOUNT', KEYS[1], '-inf', now)} end
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #rows do
  redis.call('DEL', ARGV[1] .. rows[i])
end
if #rows > 0 then redis.call('ZREM', KEYS[1], unpack(rows)) end
return {now, #rows}
