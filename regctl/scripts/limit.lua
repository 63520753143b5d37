-- One hit on a client key's sliding window (its sign-ups or its codes), unless the
-- window is full. The hit is the call's token: a replay of the call counts once.
-- KEYS: the client's window (a sorted set of tokens scored by the server's time)
-- ARGV: window_ms, limit, token
-- Returns 0 when counted (or a replay), else the ms until the oldest hit leaves.
local window_ms, limit, token = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local window = KEYS[1]
allowed({{'zadd', window, '1', 'm'}, {'zremrangebyscore', window, '0', '1'},
  {'pexpire', window, '1'}})
local now = server_now()
redis.call('ZREMRANGEBYSCORE', window, '-inf', now - window_ms)
if redis.call('ZSCORE', window, token) then return 0 end
if redis.call('ZCARD', window) >= limit then
  local oldest = redis.call('ZRANGE', window, 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window_ms - now)
end
redis.call('ZADD', window, now, token)
redis.call('PEXPIRE', window, window_ms)
return 0
