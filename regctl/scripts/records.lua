-- A page of one bucket's records in one reply, not one reply per record (list, export,
-- a filtered purge): each record's values of the fields asked, or nil if it is gone.
-- KEYS: the records (one bucket)
-- ARGV: the field names to read, in order (codec.ROW)
-- Returns {{value, value, ...} or nil, ...}: a missing field's value is nil, and so is
-- every value of a key that is not a hash (not regctl's: read as a damaged record)
local out = {}
local pcall, find = redis.pcall, string.find
local fields = #ARGV
for i = 1, #KEYS do
  local record = KEYS[i]
  -- One command per record (the page's cost on the server): HMGET alone tells a hash,
  -- a key of another type (its error) and, when no field is found, a key gone since.
  local row = pcall('HMGET', record, unpack(ARGV))
  if row.err then
    if not find(row.err, '^WRONGTYPE') then error(row) end
    row = {}
    for j = 1, fields do row[j] = false end
  else
    local found = false
    for j = 1, fields do
      if row[j] then
        found = true
        break
      end
    end
    -- (none of the fields: gone since, or a hash of none of regctl's, as the rest are
    -- read: all nil)
    if not found and redis.call('EXISTS', record) == 0 then row = false end
  end
  out[i] = row
end
return out
