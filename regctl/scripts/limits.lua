-- How full a client key's windows are, on the server's clock (read only).
-- KEYS: the client's windows (sign-ups, codes)
-- ARGV: window_ms
-- Returns {hits, ms until the oldest leaves (0: none)} per window.
local window_ms = tonumber(ARGV[1])
local now = server_now()
local out = {}
for i = 1, #KEYS do
  local window = KEYS[i]
  local hits = redis.call('ZCOUNT', window, '(' .. (now - window_ms), '+inf')
  local wait = 0
  if hits > 0 then
    local oldest = redis.call('ZRANGEBYSCORE', window, '(' .. (now - window_ms), '+inf',
      'WITHSCORES', 'LIMIT', 0, 1)
    wait = math.max(1, tonumber(oldest[2]) + window_ms - now)
  end
  out[i] = {hits, wait}
end
return out
