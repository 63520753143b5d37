-- Create a pending registration unless one exists; record, TTL and index in one step.
-- KEYS: record, index, funnel x3   ARGV: digest, email, first, last, password_hash,
--   code_hash, lifetime_ms, code_lifetime_ms, schema, token, index_grace_ms,
--   funnel_keep_ms, client_day
-- Returns {status, now, fields}: status "created" or "exists".
allowed({{'hset', KEYS[1], 'f', 'v'}, {'pexpireat', KEYS[1], '1'}, {'zadd', KEYS[2], '1', 'm'},
  {'pexpireat', KEYS[2], '1'}, {'hincrby', KEYS[#KEYS], 'f', '1'}})
local now = server_now()
if redis.call('EXISTS', KEYS[1]) == 1 then
  -- A replay of this same call (lost reply) is a success, not a conflict.
  if redis.call('HGET', KEYS[1], 'at') == ARGV[10] then
    return {'created', now, redis.call('HGETALL', KEYS[1])}
  end
  return {'exists', now, {}}
end
local expires = now + tonumber(ARGV[7])
redis.call('HSET', KEYS[1],
  'v', ARGV[9], 'email', ARGV[2], 'fn', ARGV[3], 'ln', ARGV[4], 'pw', ARGV[5],
  'ch', ARGV[6], 'c', now, 'e', expires, 'ce', now + tonumber(ARGV[8]), 's', now,
  'r', 0, 'a', 0, 'l', 0, 'at', ARGV[10])
redis.call('PEXPIREAT', KEYS[1], expires)
redis.call('ZADD', KEYS[2], expires, ARGV[1])
extend_index(KEYS[2], expires, tonumber(ARGV[11]), now)
funnel('created', 1, tonumber(ARGV[12]), tonumber(ARGV[13]), now)
funnel('sent', 1, tonumber(ARGV[12]), tonumber(ARGV[13]), now)
return {'created', now, redis.call('HGETALL', KEYS[1])}
