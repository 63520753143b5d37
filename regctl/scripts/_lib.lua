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
  redis.call('HINCRBY', counters, field, n)
  redis.call('PEXPIREAT', counters, (day + 1) * 86400000 + keep_ms)
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
