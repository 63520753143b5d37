-- A page of one bucket's records in one reply, not one reply per record (list, export,
-- a filtered purge): each record's values of the fields asked, or nil if it is gone.
-- KEYS: the records (one bucket)
-- ARGV: the field names to read, in order (codec.ROW)
-- Returns {{value, value, ...} or nil, ...}: a missing field's value is nil, and so is
-- every value of a key that is not a hash (not regctl's: read as a damaged record)
local out = {}
for i = 1, #KEYS do
  local row = record_values(KEYS[i], ARGV)
  if row == OTHER_TYPE then
    row = {}
    for j = 1, #ARGV do row[j] = false end
  end
  out[i] = row or false
end
return out
