-- A bucket's index entries whose lifetime is over, in short steps.
-- mode "count":  KEYS: index                 Returns {now, how many}
-- mode "list":   KEYS: index                 ARGV: mode, batch
--                Returns {now, {digest, ...}}: the oldest `batch` of them
-- mode "remove": KEYS: index, the record of each digest, funnel x3
--                ARGV: mode, funnel_keep_ms, client_day, digest...
--                Removes each entry still expired (and its record, should it remain);
--                returns {now, how many}
local now = server_now()
local mode = ARGV[1]
if mode == 'count' then return {now, redis.call('ZCOUNT', KEYS[1], '-inf', now)} end
if mode == 'list' then
  return {now, redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))}
end
allowed({{'del', KEYS[1]}, {'zrem', KEYS[1], 'm'}, {'hincrby', KEYS[#KEYS], 'f', '1'},
  {'pexpireat', KEYS[#KEYS], '1'}})
local removed = 0
for i = 4, #ARGV do
  local score = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if score and tonumber(score) <= now then
    redis.call('DEL', KEYS[i - 2])
    redis.call('ZREM', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
-- Entries still in the index at expiry were never verified: the funnel's drop-outs.
funnel('expired', removed, tonumber(ARGV[2]), tonumber(ARGV[3]), now)
return {now, removed}
