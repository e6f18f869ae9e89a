"""The Lua scripts of the Redis history store.

Each script touches the keys of one topic only (one Redis Cluster slot); the key layout and
the reading-by-time search they implement are described in
:mod:`agentcast.storage.redis_store`. The comment above each script states its keys,
arguments and reply.
"""

from __future__ import annotations

from typing import Final

_LUA_HELPERS: Final = """
local function id_of(seq) return string.format('%d-0', seq) end
local function seq_of(id) return tonumber(string.match(id, '^(%d+)')) end
local function field(entry, name)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end
local function first_retained(events)
  local head = redis.call('XRANGE', events, '-', '+', 'COUNT', 1)[1]
  if head then return seq_of(head[1]) end
  return nil
end
-- The lowest seq in [first, last] whose running maximum time 'm' reaches bound (last + 1
-- if none): retained seqs are contiguous and 'm' never decreases along them.
local function first_reaching(events, first, last, bound)
  local lo, hi = first, last + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local entry = redis.call('XRANGE', events, id_of(mid), id_of(mid))[1]
    if not entry then error('agentcast: retained seqs are not contiguous') end
    if tonumber(field(entry, 'm')) >= bound then hi = mid else lo = mid + 1 end
  end
  return lo
end
"""

# KEYS: meta, events, keys, expiry. ARGV: now, expires_at, a fresh epoch, the drafts. Each
# draft is four lengths (4 bytes big-endian each) then the four fields: '' or 'k' .. its
# idempotency key, metadata JSON, payload, time in microseconds. (One argument, not four per
# draft: building and parsing thousands of arguments costs more than the script itself.)
# Returns {epoch, created (1 if the topic had no meta), first new seq, then for each
# duplicate: its index in the batch (1-based), the original seq, the original entry (0 if
# trimmed)}; the other drafts got consecutive seqs from the first new seq, in order.
# Nothing is written before every check has passed except the purge of expired keys, so
# an error leaves the topic as it was.
APPEND_SCRIPT: Final = (
    "#!lua\n"
    + _LUA_HELPERS
    + """
local meta, events, keys, expiry = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, batch = tonumber(ARGV[1]), ARGV[4]
local state = redis.call('HMGET', meta, 'epoch', 'last_seq', 'max_us')
local epoch, last, max_s = state[1], tonumber(state[2]), state[3]
local created = 0
if not epoch then
  -- A new topic, or one whose meta was lost: whatever is left of it belongs to no epoch.
  epoch, last, max_s, created = ARGV[3], 0, false, 1
  redis.call('DEL', events, keys, expiry)
end
local max_n = max_s and tonumber(max_s)
local expired = redis.call('ZRANGEBYSCORE', expiry, '-inf', ARGV[1], 'LIMIT', 0, 100)
if #expired > 0 then
  redis.call('ZREM', expiry, unpack(expired))
  redis.call('HDEL', keys, unpack(expired))
end
local pos = 1
local function size_at(at)
  local a, b, c, d = string.byte(batch, at, at + 3)
  return ((a * 256 + b) * 256 + c) * 256 + d
end
local function take(size)
  pos = pos + size
  return string.sub(batch, pos - size, pos - 1)
end
local out = {epoch, created, last + 1}
local index = 0
while pos <= #batch do
  index = index + 1
  local s1, s2, s3, s4 = size_at(pos), size_at(pos + 4), size_at(pos + 8), size_at(pos + 12)
  pos = pos + 16
  local marker, d, p, u = take(s1), take(s2), take(s3), take(s4)
  local key, original = nil, nil
  if marker ~= '' then
    key = string.sub(marker, 2)
    local expires = redis.call('ZSCORE', expiry, key)
    if expires and tonumber(expires) > now then original = redis.call('HGET', keys, key) end
  end
  if original then
    local seq = tonumber(original)
    local entry = redis.call('XRANGE', events, id_of(seq), id_of(seq))[1]
    out[#out + 1] = index
    out[#out + 1] = seq
    out[#out + 1] = entry or 0
  else
    last = last + 1
    local u_n = tonumber(u)
    if not max_n or u_n > max_n then max_s, max_n = u, u_n end
    redis.call('XADD', events, id_of(last), 'd', d, 'p', p, 'u', u, 'm', max_s)
    if key then
      redis.call('HSET', keys, key, string.format('%d', last))
      redis.call('ZADD', expiry, ARGV[2], key)
    end
  end
end
if max_s then
  redis.call('HSET', meta, 'epoch', epoch, 'last_seq', string.format('%d', last), 'max_us', max_s)
else
  redis.call('HSET', meta, 'epoch', epoch, 'last_seq', string.format('%d', last))
end
return out
"""
)

# KEYS: meta, events. ARGV: since (microseconds), limit, scan budget, '' or the seq to go
# on from. Returns {epoch ('' if unknown), next seq to go on from (0: done), entry...}.
SINCE_SCRIPT: Final = (
    "#!lua flags=no-writes\n"
    + _LUA_HELPERS
    + """
local meta, events = KEYS[1], KEYS[2]
local state = redis.call('HMGET', meta, 'epoch', 'last_seq')
if not state[1] then return {'', 0} end
local last = tonumber(state[2])
local since, want, budget = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local scan = tonumber(ARGV[4])
if not scan then
  local first = first_retained(events)
  if not first then return {state[1], 0} end
  scan = first_reaching(events, first, last, since)
end
local out = {state[1], 0}
while scan <= last and want > 0 do
  if budget <= 0 then
    out[2] = scan
    break
  end
  local chunk = redis.call('XRANGE', events, id_of(scan), '+', 'COUNT', math.min(budget, 256))
  if #chunk == 0 then break end
  for _, entry in ipairs(chunk) do
    scan = seq_of(entry[1]) + 1
    budget = budget - 1
    if tonumber(field(entry, 'u')) >= since then
      out[#out + 1] = entry
      want = want - 1
      if want == 0 then break end
    end
  end
end
return out
"""
)

# KEYS: meta, events. ARGV: keep_last, '' or the age bound (microseconds), scan budget,
# '' or the epoch the trim must still see. Deletes the events below the cutoff of
# retention_cutoff(); if the budget runs out before the scan finds an event as new as the
# bound, deletes only the events before the scan's end (all older than the bound) and
# reports more = 1. Returns {deleted, more, epoch}.
TRIM_SCRIPT: Final = (
    "#!lua\n"
    + _LUA_HELPERS
    + """
local meta, events = KEYS[1], KEYS[2]
local state = redis.call('HMGET', meta, 'epoch', 'last_seq')
if not state[1] or (ARGV[4] ~= '' and state[1] ~= ARGV[4]) then return {0, 0, ''} end
local last = tonumber(state[2])
local first = first_retained(events)
if not first then return {0, 0, state[1]} end
local cutoff = last - tonumber(ARGV[1]) + 1
local more = 0
if ARGV[2] ~= '' then
  local bound, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
  local scan = first_reaching(events, first, last, bound)
  local found = false
  while scan <= last and not found do
    if budget <= 0 then
      more = 1
      break
    end
    local chunk = redis.call('XRANGE', events, id_of(scan), '+', 'COUNT', math.min(budget, 256))
    if #chunk == 0 then
      scan = last + 1
      break
    end
    for _, entry in ipairs(chunk) do
      scan = seq_of(entry[1])
      if tonumber(field(entry, 'u')) >= bound then
        found = true
        break
      end
      scan = scan + 1
      budget = budget - 1
    end
  end
  if more == 1 then
    cutoff = scan -- the age cut lies further on: delete only the older events scanned
  elseif scan > cutoff then
    cutoff = scan
  end
end
if cutoff <= first then return {0, more, state[1]} end
return {redis.call('XTRIM', events, 'MINID', id_of(cutoff)), more, state[1]}
"""
)

# KEYS: meta, events, keys, expiry. ARGV: two different fresh epochs. Returns the new epoch.
RESET_SCRIPT: Final = """#!lua
local old = redis.call('HGET', KEYS[1], 'epoch')
local epoch = ARGV[1]
if old == epoch then epoch = ARGV[2] end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HDEL', KEYS[1], 'max_us')
redis.call('HSET', KEYS[1], 'epoch', epoch, 'last_seq', '0')
return epoch
"""
