-- Count a page's index entries whose record is gone (doctor; purge --orphans removes them).
-- KEYS: the records a page of one bucket's index names
-- Returns how many of them do not exist.
local gone = 0
for i = 1, #KEYS do
  local record = KEYS[i]
  if redis.call('EXISTS', record) == 0 then gone = gone + 1 end
end
return gone
