-- Restore an exported registration with its remaining lifetime (server clock decides).
-- KEYS: record, index
-- ARGV: digest, replace (1/0), dry_run (1/0), expires_at, index_grace_ms, max_ahead_ms,
--       clock_skew_ms, then the record's field/value pairs (regctl/codec.py encode)
-- Returns "restored", "reset" (replaced one with more attempts or resends used, or
-- locked), "exists", "expired" or "invalid" (times the server's clock cannot accept).
local digest, replace, dry_run = ARGV[1], ARGV[2] == '1', ARGV[3] == '1'
local expires, index_grace_ms = tonumber(ARGV[4]), tonumber(ARGV[5])
local max_ahead_ms, clock_skew_ms = tonumber(ARGV[6]), tonumber(ARGV[7])
local first_field = 8
local record, index = KEYS[1], KEYS[2]
allowed({{'del', record}, {'hset', record, 'f', 'v'}, {'pexpireat', record, '1'},
  {'zadd', index, '1', 'm'}, {'pexpireat', index, '1'}})
local now = server_now()
local fields, new = {}, {}
for i = first_field, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  new[ARGV[i]] = ARGV[i + 1]
end
-- Checked before the first write: no record may exist without its TTL and index entry,
-- nor be created or sent in the future (beyond a small clock skew).
if not expires or expires ~= math.floor(expires) or expires > now + max_ahead_ms
    or tonumber(new[F.created_at]) > now + clock_skew_ms
    or tonumber(new[F.last_sent_at]) > now + clock_skew_ms then
  return 'invalid'
end
if expires <= now then return 'expired' end
local old = redis.call('HMGET', record, F.locked, F.attempts, F.resend_count)
local old_locked, old_attempts, old_resends = old[1], old[2], old[3]
if not replace and old_locked then return 'exists' end
local status = 'restored'
if old_locked and ((old_locked == '1' and new[F.locked] ~= '1')
    or tonumber(old_attempts) > tonumber(new[F.attempts])
    or tonumber(old_resends) > tonumber(new[F.resend_count])) then
  status = 'reset'  -- a replace that gives back guesses or resends: the caller audits it
end
if dry_run then return status end
-- The index first: one of another type fails here, before any write.
redis.call('ZADD', index, expires, digest)
extend_index(index, expires, index_grace_ms, now)
redis.call('DEL', record)
redis.call('HSET', record, unpack(fields))
redis.call('PEXPIREAT', record, expires)
return status
