-- Read one record with the server's clock.
-- KEYS: record   Returns {now, row}: the record in codec.ROW order, nil when absent.
local record = KEYS[1]
local now = server_now()
if redis.call('EXISTS', record) == 0 then return {now, false} end
return {now, redis.call('HMGET', record, unpack(ROW))}
