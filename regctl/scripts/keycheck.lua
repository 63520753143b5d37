-- What doctor needs of a batch of keys, in one reply: each key's TTL and type, and for
-- a record, whether its bucket's index holds it.
-- KEYS: the keys to check, then the indexes named below (a standalone server only:
--       the keys span hash slots)
-- ARGV: per key checked, in order: its index's position in KEYS (0: not a record)
--       and the record's digest
-- Returns {pttl, type, indexed (1, 0, or -1 for not a record), ...} per key checked.
local checked = #ARGV / 2
local out = {}
local index_types = {}  -- each index's type, asked once per call
for i = 1, checked do
  local key, at, member = KEYS[i], tonumber(ARGV[2 * i - 1]), ARGV[2 * i]
  out[#out + 1] = redis.call('PTTL', key)
  out[#out + 1] = redis.call('TYPE', key)['ok']
  if at == 0 then
    out[#out + 1] = -1
  else
    local index = KEYS[at]
    local index_type = index_types[at]
    if not index_type then
      index_type = redis.call('TYPE', index)['ok']
      index_types[at] = index_type
    end
    if index_type == 'zset' then
      out[#out + 1] = redis.call('ZSCORE', index, member) and 1 or 0
    elseif index_type == 'none' then
      out[#out + 1] = 0  -- the whole index is gone (evicted): so is the record's entry
    else
      out[#out + 1] = 1  -- cannot tell: the index key itself is named wrong-type
    end
  end
end
return out
