-- A lease owned by a token: acquire (SET NX PX), renew or release only by its owner.
-- KEYS: lock
-- Returns 1 on success, 0 when the lock is someone else's (or gone).
local mode, token, ttl_ms = ARGV[1], ARGV[2], tonumber(ARGV[3]) -- mode: acquire | renew | release
local lock = KEYS[1]
allowed({{'set', lock, 'v'}, {'pexpire', lock, '1'}, {'del', lock}})
if mode == 'acquire' then
  if redis.call('SET', lock, token, 'NX', 'PX', ttl_ms) then return 1 end
  -- Ours already: a retry of this acquire after its reply was lost.
  if redis.call('GET', lock) == token then return 1 end
  return 0
end
if redis.call('GET', lock) ~= token then return 0 end
if mode == 'renew' then return redis.call('PEXPIRE', lock, ttl_ms) end
return redis.call('DEL', lock)
