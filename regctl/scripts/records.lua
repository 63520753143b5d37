-- A page of one bucket's records in one reply, not one reply per record (list, export,
-- a filtered purge): each record's values of the fields asked, or nil if it is gone.
-- KEYS: the records (one bucket)
-- ARGV: the field names to read, in order (codec.ROW)
-- Returns {{value, value, ...} or nil, ...}: a missing field's value is nil, and so is
-- every value of a key that is not a hash (not regctl's: read as a damaged record)
local out = {}
for i = 1, #KEYS do
  local record = KEYS[i]
  local kind = redis.call('TYPE', record).ok
  if kind == 'hash' then
    out[i] = redis.call('HMGET', record, unpack(ARGV))
  elseif kind == 'none' then
    out[i] = false
  else
    local unread = {}
    for j = 1, #ARGV do unread[j] = false end
    out[i] = unread
  end
end
return out
