-- Count a page of one bucket's records on the server's clock: counts travel, not records.
-- KEYS: the records of the page (one bucket; a record gone since is skipped)
-- ARGV: soon_ms, then the age limits in ms, ascending (reports.AGE_BUCKETS)
-- Returns {now, total, locked, code_expired, soon, {count per age limit},
--          {domain, count, domain, count, ...}, damaged}
local soon_ms = tonumber(ARGV[1])
local first_limit = 2
local now = server_now()
local total, locked, code_expired, soon, damaged = 0, 0, 0, 0, 0
local ages, limits = {}, {}
for i = first_limit, #ARGV do
  ages[i - first_limit + 1] = 0
  limits[i - first_limit + 1] = tonumber(ARGV[i])
end
local last_limit = #limits
local soon_until = now + soon_ms
local domains, named = {}, {}
-- Looked up once, not per record: this loop runs for every record in the store.
local find, sub, tonum = string.find, string.sub, tonumber
for i = 1, #KEYS do
  local row = record_values(KEYS[i], ROW)
  -- A key that is not a hash, or a hash regctl cannot read (something else wrote it),
  -- is left out, as `list` does, and counted as damaged (one gone since, nil, is not).
  if row == OTHER_TYPE or (row and not readable(row)) then
    damaged = damaged + 1
  elseif row then
    local email, is_locked = row[AT.email], row[AT.locked] == '1'
    local created, expires = tonum(row[AT.created_at]), tonum(row[AT.expires_at])
    local code_expires = tonum(row[AT.code_expires_at])
    total = total + 1
    if is_locked then
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
return {now, total, locked, code_expired, soon, ages, by_domain, damaged}
