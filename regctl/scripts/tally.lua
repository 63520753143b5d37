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
local last_limit = #limits
local soon_until = now + soon_ms
local domains, named = {}, {}
-- Looked up once, not per record: this loop runs for every record in the store.
local find, sub, tonum, pcall = string.find, string.sub, tonumber, redis.pcall
-- codec.decode's rule for a number: plain digits, below 2^53.
local function whole(text)
  if not text or not find(text, '^%d+$') then return nil end
  local n = tonum(text)
  if n >= 9007199254740992 then return nil end
  return n
end
for i = 1, #KEYS do
  local f = pcall('HMGET', KEYS[i], F.email, F.locked, F.created_at, F.expires_at,
    F.code_expires_at, F.first_name, F.last_name, F.password_hash, F.last_sent_at,
    F.resend_count, F.attempts, F.schema)
  if f.err and not find(f.err, '^WRONGTYPE') then error(f) end
  -- A key that is not a hash, or a hash regctl cannot read (something else wrote it),
  -- is left out, as `list` does: the same fields required, the same numbers accepted,
  -- as codec.decode.
  local email, lock = f[1], f[2]
  local created, expires, code_expires = whole(f[3]), whole(f[4]), whole(f[5])
  if email and lock and created and expires and code_expires
    and f[6] and f[7] and f[8] and whole(f[9]) and whole(f[10]) and whole(f[11])
    and (not f[12] or whole(f[12])) then
    total = total + 1
    if lock == '1' then
      locked = locked + 1
    elseif now >= code_expires then
      code_expired = code_expired + 1
    end
    if expires <= soon_until then soon = soon + 1 end
    local age = now - created  -- (a future creation counts as age 0: the first bucket)
    for k = 1, last_limit do
      if age < limits[k] then
        ages[k] = ages[k] + 1
        break
      end
    end
    -- The domain: after the last @ (case as stored); plain finds, no pattern that
    -- would rescan the address from every position.
    local at = find(email, '@', 1, true)
    local after = at
    while after do
      at = after
      after = find(email, '@', at + 1, true)
    end
    local domain = at and sub(email, at + 1) or email
    local seen = domains[domain]
    if seen then
      domains[domain] = seen + 1
    else
      named[#named + 1] = domain
      domains[domain] = 1
    end
  end
end
local by_domain = {}
for _, domain in ipairs(named) do
  by_domain[#by_domain + 1] = domain
  by_domain[#by_domain + 1] = domains[domain]
end
return {now, total, locked, code_expired, soon, ages, by_domain}
