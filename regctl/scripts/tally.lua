-- Count a page of one bucket's records on the server's clock: counts travel, not records.
-- KEYS: the records of the page (one bucket; a record gone since is skipped)
-- ARGV: soon_ms, then the age limits in ms, ascending (reports.AGE_BUCKETS)
-- Returns {now, total, locked, code_expired, soon, {count per age limit},
--          {domain, count, domain, count, ...}}
local soon_ms = tonumber(ARGV[1])
local first_limit = 2
local now = server_now()
local total, locked, code_expired, soon = 0, 0, 0, 0
local ages, limits = {}, {}
for i = first_limit, #ARGV do
  ages[i - first_limit + 1] = 0
  limits[i - first_limit + 1] = tonumber(ARGV[i])
end
local domains, named = {}, {}
-- Looked up once, not per record: this loop runs for every record in the store.
local match, tonum, call = string.match, tonumber, redis.call
-- codec.decode's rule for a number: plain digits, below 2^53.
local function whole(text)
  if not text or not match(text, '^%d+$') then return nil end
  local n = tonum(text)
  if n >= 9007199254740992 then return nil end
  return n
end
for i = 1, #KEYS do
  local record = KEYS[i]
  local f = call('HMGET', record, F.email, F.locked, F.created_at, F.expires_at,
    F.code_expires_at, F.first_name, F.last_name, F.password_hash, F.last_sent_at,
    F.resend_count, F.attempts, F.schema)
  local email, is_locked = f[1], f[2] == '1'
  local created, expires, code_expires = whole(f[3]), whole(f[4]), whole(f[5])
  -- A hash regctl cannot read (something else wrote it) is left out, as `list` does:
  -- the same fields required, the same numbers accepted, as codec.decode.
  local readable = email and f[2] and created and expires and code_expires
    and f[6] and f[7] and f[8] and whole(f[9]) and whole(f[10]) and whole(f[11])
    and (not f[12] or whole(f[12]))
  if readable then
    total = total + 1
    if is_locked then locked = locked + 1 end
    if now >= code_expires and not is_locked then code_expired = code_expired + 1 end
    if math.max(0, expires - now) <= soon_ms then soon = soon + 1 end
    local age = math.max(0, now - created)
    for k = 1, #limits do
      if age < limits[k] then
        ages[k] = ages[k] + 1
        break
      end
    end
    local domain = match(email, '([^@]*)$')  -- after the last @ (case as stored)
    if not domains[domain] then named[#named + 1] = domain; domains[domain] = 0 end
    domains[domain] = domains[domain] + 1
  end
end
local by_domain = {}
for _, domain in ipairs(named) do
  by_domain[#by_domain + 1] = domain
  by_domain[#by_domain + 1] = domains[domain]
end
return {now, total, locked, code_expired, soon, ages, by_domain}
