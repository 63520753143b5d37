-- One page of a bucket's live index entries in (expires_at, digest) order after a
-- cursor, on the server's clock. Only the index is read: the caller fetches the
-- records it names (their keys declared), so every key is routed and migrated right.
-- KEYS: index
-- Returns {now, {digest, expires_at, digest, expires_at, ...}}
local after_score, after, limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local index = KEYS[1]
local now = server_now()
local min = '(' .. now
local skip_ties = false
if after_score > now then
  min = after_score
  skip_ties = true
end
local out = {}
local offset = 0
while #out < 2 * limit do
  local rows = redis.call('ZRANGEBYSCORE', index, min, '+inf', 'WITHSCORES', 'LIMIT', offset, limit)
  local n = #rows / 2
  for i = 1, #rows, 2 do
    local member, score = rows[i], rows[i + 1]
    if not (skip_ties and tonumber(score) == after_score and member <= after) then
      out[#out + 1] = member
      out[#out + 1] = score
      if #out >= 2 * limit then break end
    end
  end
  if n < limit then break end
  offset = offset + n
end
return {now, out}
