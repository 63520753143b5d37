-- Replace the code: the old one is dead at once; cooldown and cap checked here.
-- Attempts and the record's TTL are left as they are. With a new sign-up's names and
-- password hash (a concealed add), those replace the record's along with the code, so
-- the code mailed now confirms the data of the sign-up that asked for it.
-- KEYS: record, funnel x3
-- ARGV: ..., first_name, last_name, password_hash, email as written ('' each: keep the
-- record's; given, that add's call is kept too, for its replays after a verify)
-- Returns {status, now, detail}: ok or replayed (the record in codec.ROW order) |
-- not_found | locked | resend_limit | cooldown (wait ms) | damaged (a record regctl
-- cannot read, left as it was)
local code_hash, code_lifetime_ms = ARGV[1], tonumber(ARGV[2])
local cooldown_ms, max_resends, token = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local funnel_keep_ms, client_day = tonumber(ARGV[6]), tonumber(ARGV[7])
local first_name, last_name, password_hash, email = ARGV[8], ARGV[9], ARGV[10], ARGV[11]
local record = KEYS[1]
allowed({{'hset', record, 'f', 'v'}, {'hincrby', record, 'f', '1'}, {'pexpireat', record, '1'}})
local now = server_now()
if redis.call('EXISTS', record) == 0 then return {'not_found', now, {}} end
-- This call: its token; a concealed add's, its add call (so the same token with other
-- names, or a plain resend's token, is another call).
local call = token
if password_hash ~= '' then call = add_call(token, email, first_name, last_name) end
local asked = {unpack(ROW)}
asked[#ROW + 1] = F.resend_token
asked[#ROW + 2] = F.concealed_add
local row = redis.call('HMGET', record, unpack(asked))
local last_token, concealed = row[#ROW + 1], row[#ROW + 2]
row[#ROW + 2] = nil
row[#ROW + 1] = nil  -- (the record's values in ROW order)
-- A record something else wrote is changed by no step (Redis undoes nothing, and the
-- caller could not read what it changed).
if not readable(row) then return {'damaged', now, 0} end
local locked, resends = row[AT.locked], tonumber(row[AT.resend_count])
local last_sent = tonumber(row[AT.last_sent_at])
-- A replay of this same call (lost reply): the code it stored is the current one (or,
-- for a concealed add that resent it before the last resend, was).
if last_token == call or (password_hash ~= '' and concealed_by(concealed, call)) then
  return {'replayed', now, row}
end
if locked == '1' then return {'locked', now, {}} end
if resends >= max_resends then return {'resend_limit', now, {}} end
local wait = last_sent + cooldown_ms - now
if wait > 0 then return {'cooldown', now, wait} end
redis.call('HSET', record, F.code_hash, code_hash, F.code_expires_at, now + code_lifetime_ms,
  F.last_sent_at, now, F.resend_token, call)
if password_hash ~= '' then
  redis.call('HSET', record, F.first_name, first_name, F.last_name, last_name,
    F.password_hash, password_hash, F.concealed_add, with_concealed(concealed, call))
end
redis.call('HINCRBY', record, F.resend_count, 1)
funnel('sent', 1, funnel_keep_ms, client_day, now)
return {'ok', now, redis.call('HMGET', record, unpack(ROW))}
