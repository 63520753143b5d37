-- After a rotation of the code secret: a code made with another secret, which no
-- verify can accept, expires now, so inspect, list --code-expired and stats say so.
-- Only the code read: one a resend replaced meanwhile is left as it is.
-- KEYS: record
-- ARGV: the code hash read
-- Returns 1 when the code expired now, else 0 (gone, replaced, or expired already)
local record, read = KEYS[1], ARGV[1]
allowed({{'hset', record, 'f', 'v'}})
local now = server_now()
local row = redis.call('HMGET', record, F.code_hash, F.code_expires_at)
if row[1] ~= read or not whole(row[2]) or whole(row[2]) <= now then return 0 end
redis.call('HSET', record, F.code_expires_at, now)
return 1
