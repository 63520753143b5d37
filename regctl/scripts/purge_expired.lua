-- A bucket's index entries whose lifetime is over, in short steps.
-- mode "count":  KEYS: index                 ARGV: mode
--                Returns {now, how many}
-- mode "list":   KEYS: index                 ARGV: mode, batch
--                Returns {now, {digest, ...}, dropped}: the oldest `batch` of them; the
--                members among those that name no record (not a digest: not regctl's,
--                whatever bytes they hold, which no client may be able to send back)
--                are removed here instead, `dropped` of them
-- mode "remove": KEYS: index, the record of each digest, funnel x3
--                ARGV: mode, funnel_keep_ms, client_day, digest...
--                Removes each entry still expired (and its record, should it remain
--                past its own lifetime; a record its lifetime keeps has its entry set
--                right instead); returns {now, how many}
local mode = ARGV[1]
local index = KEYS[1]
local now = server_now()
if mode == 'count' then return {now, redis.call('ZCOUNT', index, '-inf', now)} end
if mode == 'list' then
  local batch = tonumber(ARGV[2])
  local listed, dropped = {}, 0
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, batch)) do
    if #member == 32 and not string.find(member, '[^0-9a-f]') then
      listed[#listed + 1] = member
    else
      if dropped == 0 then allowed({{'zrem', index, 'm'}}) end
      redis.call('ZREM', index, member)
      dropped = dropped + 1
    end
  end
  return {now, listed, dropped}
end
local funnel_keep_ms, client_day = tonumber(ARGV[2]), tonumber(ARGV[3])
local first_digest = 4 -- ARGV[first_digest + k] names KEYS[2 + k], the record
allowed({{'del', index}, {'zrem', index, 'm'}, {'zadd', index, '1', 'm'},
  {'hincrby', KEYS[#KEYS], 'f', '1'}, {'pexpireat', KEYS[#KEYS], '1'}})
local removed = 0
for i = first_digest, #ARGV do
  local digest, record = ARGV[i], KEYS[i - first_digest + 2]
  local score = redis.call('ZSCORE', index, digest)
  if score and tonumber(score) <= now then
    -- (an entry something else scored: the record's own lifetime decides)
    local expires = whole(redis.pcall('HGET', record, F.expires_at))
    if expires and expires > now then
      redis.call('ZADD', index, expires, digest)
    else
      redis.call('DEL', record)
      redis.call('ZREM', index, digest)
      removed = removed + 1
    end
  end
end
-- Entries still in the index at expiry were never verified: the funnel's drop-outs.
funnel('expired', removed, funnel_keep_ms, client_day, now)
return {now, removed}
