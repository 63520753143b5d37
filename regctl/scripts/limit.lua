-- One call counted in a client key's sliding windows (its sign-ups, its codes), all or
-- none: when any window is full, none counts it.
-- KEYS: the client's windows for this call (sorted sets of hits scored by the server's
--       time; one hash slot per client)
-- ARGV: window_ms, hit (the call, bound to its operation, address and token: a replay
--       counts once), then the limit of each window in KEYS' order
-- Returns 0 when counted (or a replay), else the ms until the fullest window has room.
local window_ms, hit = tonumber(ARGV[1]), ARGV[2]
local first_limit = 3
allowed({{'zadd', KEYS[1], '1', 'm'}, {'zremrangebyscore', KEYS[1], '0', '1'},
  {'pexpire', KEYS[1], '1'}})
local now = server_now()
local wait, replayed = 0, true
for i = 1, #KEYS do
  local window, limit = KEYS[i], tonumber(ARGV[first_limit + i - 1])
  redis.call('ZREMRANGEBYSCORE', window, '-inf', now - window_ms)
  if not redis.call('ZSCORE', window, hit) then
    replayed = false
    if redis.call('ZCARD', window) >= limit then
      local oldest = redis.call('ZRANGE', window, 0, 0, 'WITHSCORES')
      wait = math.max(wait, tonumber(oldest[2]) + window_ms - now, 1)
    end
  end
end
if replayed or wait > 0 then return wait end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now, hit)
  redis.call('PEXPIRE', KEYS[i], window_ms)
end
return 0
