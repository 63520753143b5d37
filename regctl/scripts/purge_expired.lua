-- Remove up to ARGV[2] index entries whose lifetime is over (and their records, should
-- any remain), so each call is short; the caller loops until fewer come back.
-- KEYS: index   ARGV: record_base, batch, dry_run (1 = only count), funnel_keep_ms
-- Returns {now, removed_or_counted}
allowed({{'del', ARGV[1] .. 'x'}, {'zrem', KEYS[1], 'm'}, {'hincrby', KEYS[1], 'f', '1'},
  {'pexpireat', KEYS[1], '1'}})
local now = server_now()
if ARGV[3] == '1' then return {now, redis.call('ZCOUNT', KEYS[1], '-inf', now)} end
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for i = 1, #rows do
  redis.call('DEL', ARGV[1] .. rows[i])
end
if #rows > 0 then redis.call('ZREM', KEYS[1], unpack(rows)) end
-- Entries still in the index at expiry were never verified: the funnel's drop-outs.
funnel(KEYS[1], 'expired', #rows, tonumber(ARGV[4]), now)
return {now, #rows}
