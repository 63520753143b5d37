-- One page of a bucket's live records in (expires_at, digest) order after a cursor.
-- Record keys are the index's bucket prefix plus a digest: the same hash slot.
-- KEYS: index   ARGV: record_base, after_score, after_digest, limit
-- Returns {now, {{digest, expires_at, fields}, ...}}; fields empty for an orphan entry.
local now = server_now()
local after_score = tonumber(ARGV[2])
local after = ARGV[3]
local limit = tonumber(ARGV[4])
local min = '(' .. now
local skip_ties = false
if after_score > now then
  min = after_score
  skip_ties = true
end
local out = {}
local offset = 0
while #out < limit do
  local rows = redis.call('ZRANGEBYSCORE', KEYS[1], min, '+inf', 'WITHSCORES', 'LIMIT', offset, limit)
  local n = #rows / 2
  for i = 1, #rows, 2 do
    local member, score = rows[i], rows[i + 1]
    if not (skip_ties and tonumber(score) == after_score and member <= after) then
      out[#out + 1] = {member, score, redis.call('HGETALL', ARGV[1] .. member)}
      if #out >= limit then break end
    end
  end
  if n < limit then break end
  offset = offset + n
end
return {now, out}
