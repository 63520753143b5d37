-- Prepended to every regctl script when it is loaded (see store/scripts.py, ScriptRunner.script).

-- Milliseconds on the Redis server's clock: the only clock regctl trusts.
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Count n events of one kind in the bucket's funnel counters of the server's day,
-- kept `keep_ms` after the day ends. The caller declares the bucket's counters of
-- the day before, the day and the day after `client_day` (its own clock) as the last
-- three KEYS (p:{bNN}:funnel:<day>, the record's hash slot); the server's clock picks
-- one. A client clock more than a day off counts nothing rather than touch a key it
-- did not declare.
local function funnel(field, n, keep_ms, client_day, now)
  if keep_ms <= 0 or n == 0 then return end
  local day = math.floor(now / 86400000)
  local offset = day - client_day
  if offset < -1 or offset > 1 then return end
  local counters = KEYS[#KEYS - 1 + offset]
  -- Counting comes after the step it counts: a counter something else damaged (another
  -- type, a value not a number or at its limit) is left as it is, never failing that
  -- step half-way (Redis undoes nothing a script did before an error).
  redis.pcall('HINCRBY', counters, field, n)
  redis.pcall('PEXPIREAT', counters, (day + 1) * 86400000 + keep_ms)
end

-- codec.decode's rule for a stored number: plain digits, below 2^53; else nil.
local whole
do
  local find, tonum = string.find, tonumber
  whole = function(text)
    if type(text) ~= 'string' or not find(text, '^%d+$') then return nil end
    local n = tonum(text)
    if n >= 9007199254740992 then return nil end
    return n
  end
end

-- Whether a record's values in ROW order are one codec.decode_row reads (the text it
-- requires present, every number as it takes them). A step changes no record its
-- caller could not read back, and counts none `list` leaves out.
local function readable(row)
  local schema = row[AT.schema]
  return row[AT.email] and row[AT.first_name] and row[AT.last_name]
    and row[AT.password_hash] and row[AT.locked]
    and whole(row[AT.created_at]) and whole(row[AT.expires_at])
    and whole(row[AT.code_expires_at]) and whole(row[AT.last_sent_at])
    and whole(row[AT.resend_count]) and whole(row[AT.attempts])
    and (not schema or whole(schema))
end


-- A record's values of `fields` (codec.ROW's names, in order) by one HMGET, the
-- whole-store reads' cost on the server: the values (nil for a field it lacks); nil
-- when the key is gone; OTHER_TYPE for a key that is not a hash (not regctl's).
local OTHER_TYPE = {}
local function record_values(record, fields)
  local row = redis.pcall('HMGET', record, unpack(fields))
  if row.err then
    if not string.find(row.err, '^WRONGTYPE') then error(row) end
    return OTHER_TYPE
  end
  for j = 1, #fields do
    if row[j] then return row end
  end
  -- (none of the fields: gone since, or a hash of none of regctl's, damaged)
  if redis.call('EXISTS', record) == 0 then return nil end
  return row
end

-- Let the shared index outlive its longest-lived entry by a grace period, so purge
-- can still count expired entries; an idle bucket then cleans itself up.
local function extend_index(index, expires, grace_ms, now)
  local keep_until = expires + grace_ms
  local ttl = redis.call('PTTL', index)
  if ttl < 0 or now + ttl < keep_until then
    redis.call('PEXPIREAT', index, keep_until)
  end
end

-- An add's call: a digest of its token, address as written and names.
local function add_call(token, email, first_name, last_name)
  return redis.sha1hex(token .. '\0' .. email .. '\0' .. first_name .. '\0' .. last_name)
end

-- The concealed adds that resent a record's code (each its add call, space-separated),
-- the last CONCEALED_KEPT of them (codec.py).
local function with_concealed(concealed, call)
  local calls = {}
  for kept in string.gmatch(concealed or '', '%S+') do calls[#calls + 1] = kept end
  calls[#calls + 1] = call
  return table.concat(calls, ' ', math.max(1, #calls - CONCEALED_KEPT + 1))
end

-- Whether `call` is one of them.
local function concealed_by(concealed, call)
  return string.find(' ' .. (concealed or '') .. ' ', ' ' .. call .. ' ', 1, true) ~= nil
end

-- The add that made a record stays in its F.add_token: that add's call, which a resend
-- never changes; the concealed adds that resent its code, in F.concealed_add. Verify
-- and delete keep them in the address's `gone` hash (declared by the caller): call ->
-- creation time, every consumed add of the replay window (from the last one), so a
-- replay of any of them is answered and stores nothing (add.lua). (A `gone` key
-- something else made another type is left as it is, never failing the step
-- half-way: those adds' late replays are then new calls.)
local function leave_gone(gone_key, record_key, replay_ms)
  local made = redis.call('HMGET', record_key, F.add_token, F.created_at, F.concealed_add)
  local created = whole(made[2])
  if not created then return end  -- (something else wrote it)
  local kept = {}
  -- (an imported record has no add, but may have concealed ones since)
  for call in string.gmatch((made[1] or '') .. ' ' .. (made[3] or ''), '%S+') do
    kept[#kept + 1] = call
    kept[#kept + 1] = created
  end
  if #kept == 0 then return end
  if type(redis.pcall('HSET', gone_key, unpack(kept))) == 'number' then
    redis.pcall('PEXPIRE', gone_key, replay_ms)  -- (never a TTL on another's key)
  end
end

-- Refuse, before the first write, when the user may not run every write command this
-- script can reach (Redis 7's ACL check; older servers have no ACL of this kind to
-- check): a denial half-way would leave a record without its TTL or index entry.
local function allowed(specs)
  if not redis.acl_check_cmd then return end
  for _, spec in ipairs(specs) do
    if not redis.acl_check_cmd(unpack(spec)) then
      error({err = 'NOPERM the Redis user may not run ' .. string.upper(spec[1]) ..
        ', which this regctl command needs'})
    end
  end
end
