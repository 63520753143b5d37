-- Create a pending registration unless one exists; record, TTL and index in one step.
-- A replay after the record is gone (verify or delete left its call in the address's
-- `gone` hash, for the replay window after) gets the first answer and creates
-- nothing: its code was used.
-- KEYS: record, index, gone, funnel x3
-- Returns {status, now[, row]}: "created" (the record is what the caller sent, as of
-- now), "replayed" (with the record in codec.ROW order, or, the record gone, `now` its
-- creation time) or "exists".
local digest, email, first_name, last_name = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local password_hash, code_hash = ARGV[5], ARGV[6]
local lifetime_ms, code_lifetime_ms = tonumber(ARGV[7]), tonumber(ARGV[8])
local schema, token, index_grace_ms = ARGV[9], ARGV[10], tonumber(ARGV[11])
local funnel_keep_ms, client_day = tonumber(ARGV[12]), tonumber(ARGV[13])
local record, index, gone = KEYS[1], KEYS[2], KEYS[3]
allowed({{'hset', record, 'f', 'v'}, {'pexpireat', record, '1'}, {'zadd', index, '1', 'm'},
  {'pexpireat', index, '1'}, {'hincrby', KEYS[#KEYS], 'f', '1'}})
local now = server_now()
-- This call: its token, address as written and names (see leave_gone in _lib).
local call = add_call(token, email, first_name, last_name)
if redis.call('EXISTS', record) == 1 then
  -- A replay of this same call (lost reply) is a success, not a conflict. (Each try
  -- hashes the password anew: whether it is the same one is the manager's to check.)
  -- The same token with anything else is another call, refused as any add on a
  -- pending address is.
  if redis.call('HGET', record, F.add_token) == call then
    return {'replayed', now, redis.call('HMGET', record, unpack(ROW))}
  end
  return {'exists', now, {}}
end
-- (read as any key might be: something else may have made it another type, an error
-- whole() reads as nothing)
local made = whole(redis.pcall('HGET', gone, call))
if made then return {'replayed', made} end
local expires = now + lifetime_ms
-- The index first: an index something else made another type fails here, before any
-- write (Redis undoes nothing), not after the record is stored.
redis.call('ZADD', index, expires, digest)
extend_index(index, expires, index_grace_ms, now)
redis.call('HSET', record,
  F.schema, schema, F.email, email, F.first_name, first_name, F.last_name, last_name,
  F.password_hash, password_hash, F.code_hash, code_hash, F.created_at, now,
  F.expires_at, expires, F.code_expires_at, now + code_lifetime_ms, F.last_sent_at, now,
  F.resend_count, 0, F.attempts, 0, F.locked, 0, F.add_token, call)
redis.call('PEXPIREAT', record, expires)
funnel('created', 1, funnel_keep_ms, client_day, now)
funnel('sent', 1, funnel_keep_ms, client_day, now)
return {'created', now}
