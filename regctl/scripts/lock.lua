-- A lease owned by a token: acquire (SET NX PX), renew or release only by its owner.
-- KEYS: lock   ARGV: mode ("acquire" | "renew" | "release"), token, ttl_ms
-- Returns 1 on success, 0 when the lock is someone else's (or gone).
allowed({{'set', KEYS[1], 'v'}, {'pexpire', KEYS[1], '1'}, {'del', KEYS[1]}})
if ARGV[1] == 'acquire' then
  if redis.call('SET', KEYS[1], ARGV[2], 'NX', 'PX', tonumber(ARGV[3])) then return 1 end
  -- Ours already: a retry of this acquire after its reply was lost.
  if redis.call('GET', KEYS[1]) == ARGV[2] then return 1 end
  return 0
end
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
if ARGV[1] == 'renew' then return redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3])) end
return redis.call('DEL', KEYS[1])
