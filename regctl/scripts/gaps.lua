-- Check, on the server, what doctor's client-side comparison of a bucket's index with
-- the records a SCAN found could not settle: a real gap, or a record added or removed
-- since one side was read.
-- KEYS: the bucket's index, then the records checked
-- ARGV: 'gone' (index entries whose record the SCAN did not find: count the live ones
--       whose record is missing, orphans) or 'loose' (records the index pages did not
--       list: count those that exist with no entry at all, unindexed); then the
--       records' digests, in KEYS order
-- Returns the count.
local mode, index = ARGV[1], KEYS[1]
local now = server_now()
local call = redis.call
local count = 0
for i = 2, #KEYS do
  local score = call('ZSCORE', index, ARGV[i])
  local exists = call('EXISTS', KEYS[i]) == 1
  if mode == 'gone' then
    if not exists and score and tonumber(score) > now then count = count + 1 end
  elseif exists and not score then
    count = count + 1
  end
end
return count
