-- Check a code and, when right, consume the record, in one step.
-- The attempt is counted before comparing. Every answer that changed something is
-- kept under the call's marker (named by identity and token), so a replay of the
-- same call with the same code gets the same answer and counts no second attempt;
-- the same token with another code is a new call.
-- KEYS: record, index, marker, gone, funnel x3
-- Returns {status, now, attempts_left, consumed}: the consumed record in codec.ROW order
-- (VERIFIED; a replay: as JSON field/value pairs), else ''; status "damaged": a record
-- regctl cannot read, left as it was
local digest, candidate, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
local replay_ms, keep_ms, client_day = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local record, index, marker, gone = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
allowed({{'hincrby', record, 'f', '1'}, {'hset', record, 'f', 'v'}, {'del', record},
  {'zrem', index, 'm'}, {'set', marker, 'v'}, {'pexpireat', record, '1'},
  {'hset', gone, 'f', 'v'}, {'pexpire', gone, '1'}})
local now = server_now()

local first = redis.call('GET', marker)
if first then
  first = cjson.decode(first)
  if first[1] == candidate then return {first[2], now, first[3], first[4]} end
end

-- The marker keeps a consumed record as JSON field/value pairs (the form every regctl
-- version reads back on a replay); the answer carries it in codec.ROW order.
local function answer(status, left, consumed)
  local kept = ''
  if consumed ~= '' then
    local pairs = {}
    for i, name in ipairs(ROW) do
      if consumed[i] then
        pairs[#pairs + 1] = name
        pairs[#pairs + 1] = consumed[i]
      end
    end
    kept = cjson.encode(pairs)
  end
  redis.call('SET', marker, cjson.encode({candidate, status, left, kept}), 'PX', replay_ms)
  return {status, now, left, consumed}
end

local function lock()
  redis.call('HSET', record, F.locked, 1)
  funnel('locked', 1, keep_ms, client_day, now)
end

if redis.call('EXISTS', record) == 0 then return {'not_found', now, 0, ''} end
local row = redis.call('HMGET', record, unpack(ROW))
-- A record something else wrote is changed by no step (Redis undoes nothing, and the
-- caller could not read what it consumed).
if not (readable(row) and row[AT.code_hash]) then return {'damaged', now, 0, ''} end
local locked, used = row[AT.locked], tonumber(row[AT.attempts])
local code_expires, code_hash = tonumber(row[AT.code_expires_at]), row[AT.code_hash]
if locked == '1' then return {'locked', now, 0, ''} end
if now >= code_expires then
  return {'code_expired', now, math.max(0, max - used), ''}
end
-- A code hash is fingerprint:hmac (older ones: hmac). Another secret's code is not a
-- wrong guess: say so and count nothing.
local stored_fp, stored_mac = string.match(code_hash, '^(%x+):(%x+)$')
local mine_fp, mine_mac = string.match(candidate, '^(%x+):(%x+)$')
if stored_fp == nil then stored_mac = code_hash end
if mine_fp == nil then mine_mac = candidate end
if stored_fp and stored_fp ~= mine_fp then
  return {'wrong_secret', now, max - used, ''}
end
local attempts = redis.call('HINCRBY', record, F.attempts, 1)
if attempts > max then
  lock()
  return answer('locked', 0, '')
end
if stored_mac ~= mine_mac then
  if attempts >= max then lock() end
  return answer('invalid_code', max - attempts, '')
end
-- The consumed record goes back to the caller (and into the marker) in codec.ROW order,
-- as it is now: this attempt counted, without the code's hash.
local consumed = row
consumed[AT.attempts] = tostring(attempts)
consumed[AT.code_hash] = false
leave_gone(gone, record, replay_ms)
redis.call('DEL', record)
redis.pcall('ZREM', index, digest)  -- (an index something else replaced has no entry)
funnel('verified', 1, keep_ms, client_day, now)
return answer('verified', max - attempts, consumed)
