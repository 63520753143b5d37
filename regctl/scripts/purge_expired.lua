-- A bucket's index entries whose lifetime is over, in short steps.
-- mode "count":  KEYS: index                 ARGV: mode
--                Returns {now, how many}
-- mode "list":   KEYS: index                 ARGV: mode, batch
--                Returns {now, {digest, ...}}: the oldest `batch` of them
-- mode "remove": KEYS: index, the record of each digest, funnel x3
--                ARGV: mode, funnel_keep_ms, client_day, digest...
--                Removes each entry still expired (and its record, should it remain);
--                returns {now, how many}
local mode = ARGV[1]
local index = KEYS[1]
local now = server_now()
if mode == 'count' then return {now, redis.call('ZCOUNT', index, '-inf', now)} end
if mode == 'list' then
  local batch = tonumber(ARGV[2])
  return {now, redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, batch)}
end
local funnel_keep_ms, client_day = tonumber(ARGV[2]), tonumber(ARGV[3])
local first_digest = 4 -- ARGV[first_digest + k] names KEYS[2 + k], the record
allowed({{'del', index}, {'zrem', index, 'm'}, {'hincrby', KEYS[#KEYS], 'f', '1'},
  {'pexpireat', KEYS[#KEYS], '1'}})
local removed = 0
for i = first_digest, #ARGV do
  local digest, record = ARGV[i], KEYS[i - first_digest + 2]
  local score = redis.call('ZSCORE', index, digest)
  if score and tonumber(score) <= now then
    redis.call('DEL', record)
    redis.call('ZREM', index, digest)
    removed = removed + 1
  end
end
-- Entries still in the index at expiry were never verified: the funnel's drop-outs.
funnel('expired', removed, funnel_keep_ms, client_day, now)
return {now, removed}
