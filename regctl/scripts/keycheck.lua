-- What doctor needs of a batch of keys, in one reply: each key's TTL and type.
-- KEYS: the keys to check (a standalone server only: the keys span hash slots)
-- Returns {pttl, type, pttl, type, ...}, in KEYS order.
local out = {}
local call = redis.call
for i = 1, #KEYS do
  local key = KEYS[i]
  out[#out + 1] = call('PTTL', key)
  out[#out + 1] = call('TYPE', key)['ok']
end
return out
