"""The Lua side of the Redis engine: every script that touches a shard's keys, atomically.

Owns: the Lua source of each script the engine runs with EVALSHA and the key
layout they share (the body of APPEND is `engine._redis_lua_append`'s). Must
not do I/O or hold state; `engine.redis` loads and calls them,
`engine._redis_store` parses what they return.

Key layout. Every key of shard `s` starts with the hash tag `{hb:<prefix>:<s>}`
(written `T` below), so a script touching a shard touches one Redis Cluster
slot; consumer groups live under `{hb:<prefix>:g}` and revocations under
`{hb:<prefix>:r}`, each in its own slot. The groups' coordination leases
(`engine.base.Leases`) live beside the groups, in their slot, so that a
group write checks its writer's fence in the same script (the lease scripts
are `engine._redis_leases`'s):

    G:s            hash   group -> its state      (G = {hb:<prefix>:g})
    G:e:<group>    hash   the group's entries
    G:l:<name>     string the lease: `<holder>\n<fence>`, with a PX time to live
    G:f            hash   name -> its last fence (only grows; never deleted)

    T:meta         hash   epoch, pos (last position given), base (the last
                          position of the previous epoch), mt (highest
                          position removed by count or age retention)
    T:log          stream one entry per event, id `<position>-0`; fields t
                          (topic), o (offset), m (append time), x (expiry, if
                          any), p (the event's MessagePack), e (the last
                          position of the script call that wrote it, when it
                          wrote more than one: the tailer hands one call's
                          entries to the listener together)
    T:off          hash   topic -> its last offset
    T:trim         hash   topic -> highest position removed by retention
    T:topics       zset   every topic given an offset in this epoch (score 0,
                          listed by ZRANGEBYLEX)
    T:tp:<topic>   zset   the topic's retained positions (score = member)
    T:exp          zset   positions of events with an expiry (score = expiry)
    T:dd           hash   dedupe key (tenant, source, id) -> newest position
    T:ddt          zset   dedupe key -> its append time (for the window)
    T:bytes, T:age, T:due  retention by size and per-topic age
                          (`engine._redis_lua_retention`)

Every shard script first checks the epoch it was given against `T:meta`:
`HBLOST` when the meta key is gone (the shard lost its data: a restart
without persistence, FLUSHALL, a failover to an empty replica), `HBEPOCH`
when another node began a new epoch. Nothing is written before that check,
and nothing after it can fail, so a script either did everything or nothing.
Times and expiries travel as Python `repr` of a float (exact round trip);
positions stay below 2**53, where Lua numbers are exact.
"""

from __future__ import annotations

from typing import Final

from hybridbus.engine._redis_lua_append import APPEND_BODY
from hybridbus.engine._redis_lua_retention import AGES_BODY, RETAIN

__all__ = [
    "ADOPT",
    "AGES",
    "APPEND",
    "GROUPS_READ",
    "GROUPS_WRITE",
    "GROUP_READ",
    "READ_PATTERN",
    "READ_TOPIC",
    "RESET",
    "REVOCATIONS_SHORTEN",
    "REVOCATIONS_SWEEP",
    "REVOKE",
    "SWEEP",
    "TAIL_META",
    "TOPICS",
]

# Shared prologue of the shard scripts: the keys and the epoch check.
_PROLOGUE: Final = """
local meta = KEYS[1]
local tag = string.sub(meta, 1, #meta - 5)
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then return redis.error_reply('HBLOST shard data is gone') end
if epoch ~= ARGV[1] then return redis.error_reply('HBEPOCH ' .. epoch) end
local log = tag .. ':log'
local function entry(pos)
  local found = redis.call('XRANGE', log, pos .. '-0', pos .. '-0')
  if #found == 0 then return nil end
  local fields = found[1][2]
  local e = {}
  for i = 1, #fields, 2 do e[fields[i]] = fields[i + 1] end
  return e
end
local function forget(pos, e)
  redis.call('XDEL', log, pos .. '-0')
  redis.call('ZREM', tag .. ':tp:' .. e['t'], pos)
  if e['x'] then redis.call('ZREM', tag .. ':exp', pos) end
  if redis.call('HEXISTS', tag .. ':bytes', e['t']) == 1 then
    redis.call('HINCRBY', tag .. ':bytes', e['t'], -#e['p'])
  end
end
local function trimmed(topic, pos)
  local trim = tag .. ':trim'
  if tonumber(redis.call('HGET', trim, topic) or '0') < pos then
    redis.call('HSET', trim, topic, pos)
  end
  if tonumber(redis.call('HGET', meta, 'mt') or '0') < pos then
    redis.call('HSET', meta, 'mt', pos)
  end
end
"""

# The APPEND script: see `engine._redis_lua_append` for its arguments, reply and cost.
APPEND: Final = _PROLOGUE + RETAIN + APPEND_BODY

# ARGV: epoch, topic, after, want, now.
# Returns {head, trimmed position of the topic, {position, fields...}...}.
READ_TOPIC: Final = (
    _PROLOGUE
    + """
local topic = ARGV[2]
local want = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
local head = redis.call('HGET', meta, 'pos') or '0'
local trim = redis.call('HGET', tag .. ':trim', topic) or '0'
local found = {}
local from = '(' .. ARGV[3]
while #found < want do
  local positions = redis.call('ZRANGEBYSCORE', tag .. ':tp:' .. topic, from, '+inf',
                               'LIMIT', 0, 256)
  if #positions == 0 then break end
  for _, p in ipairs(positions) do
    local got = redis.call('XRANGE', log, p .. '-0', p .. '-0')
    if #got > 0 then
      local f = got[1][2]
      local x = nil
      for i = 1, #f, 2 do if f[i] == 'x' then x = tonumber(f[i + 1]) end end
      if x == nil or x > now then
        found[#found + 1] = {p, f}
        if #found == want then break end
      end
    end
  end
  from = '(' .. positions[#positions]
end
return {head, trim, found}
"""
)

# ARGV: epoch, pattern, after, want, now, upto (-1: the head), budget.
# Scans the shard's stream after `after` up to `upto` (at most `budget`
# entries per call). Returns {head, inexact (1/0), scanned up to, {position,
# fields}...}; the caller continues from `scanned up to` while it is below
# `upto` and it wants more.
READ_PATTERN: Final = (
    _PROLOGUE
    + """
local function split(s)
  local out = {}
  local start = 1
  while true do
    local i = string.find(s, '/', start, true)
    if not i then
      out[#out + 1] = string.sub(s, start)
      return out
    end
    out[#out + 1] = string.sub(s, start, i - 1)
    start = i + 1
  end
end
local p = split(ARGV[2])
local function matches(topic)
  local t = split(topic)
  if (p[1] == '+' or p[1] == '#') and string.sub(t[1], 1, 1) == '$' then return false end
  for i = 1, #p do
    local seg = p[i]
    if seg == '#' then return true end
    if i > #t then return false end
    if seg ~= '+' and seg ~= t[i] then return false end
  end
  return #p == #t
end
local after = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local now = tonumber(ARGV[5])
local head = redis.call('HGET', meta, 'pos') or '0'
local upto = tonumber(ARGV[6])
if upto < 0 then upto = tonumber(head) end
local budget = tonumber(ARGV[7])
local inexact = 0
if tonumber(redis.call('HGET', meta, 'mt') or '0') > after then
  local trims = redis.call('HGETALL', tag .. ':trim')
  for i = 1, #trims, 2 do
    if tonumber(trims[i + 1]) > after and matches(trims[i]) then
      inexact = 1
      break
    end
  end
end
local found = {}
local cursor = after
local scanned = 0
while #found < want and cursor < upto and scanned < budget do
  local got = redis.call('XRANGE', log, '(' .. cursor .. '-0', upto .. '-0', 'COUNT', 256)
  if #got == 0 then
    cursor = upto
    break
  end
  for _, item in ipairs(got) do
    local id = item[1]
    cursor = tonumber(string.sub(id, 1, string.find(id, '-', 1, true) - 1))
    scanned = scanned + 1
    local f = item[2]
    local topic, x = nil, nil
    for i = 1, #f, 2 do
      if f[i] == 't' then topic = f[i + 1] elseif f[i] == 'x' then x = tonumber(f[i + 1]) end
    end
    if (x == nil or x > now) and matches(topic) then
      found[#found + 1] = {cursor, f}
      if #found == want then break end
    end
  end
end
return {head, inexact, cursor, found}
"""
)

# ARGV: epoch, lower bound (ZRANGEBYLEX form), prefix, limit.
# Returns {name, last offset, ...}.
TOPICS: Final = (
    _PROLOGUE
    + """
local prefix = ARGV[3]
local names = redis.call('ZRANGEBYLEX', tag .. ':topics', ARGV[2], '+', 'LIMIT', 0, ARGV[4])
local out = {}
for _, name in ipairs(names) do
  if string.sub(name, 1, #prefix) ~= prefix then break end
  out[#out + 1] = name
  out[#out + 1] = redis.call('HGET', tag .. ':off', name) or '0'
end
return out
"""
)

# ARGV: epoch, now, max_age (-1: none; the same for every topic), dedupe
# window, budget, rules (1: the per-topic ages of `T:due` instead; 0: drop them).
# Returns {events removed, 1 if there may be more to remove}.
SWEEP: Final = (
    _PROLOGUE
    + RETAIN
    + """
local now = tonumber(ARGV[2])
local max_age = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local budget = tonumber(ARGV[5])
local removed = 0
local more = 0
local expired = redis.call('ZRANGEBYSCORE', tag .. ':exp', '-inf', ARGV[2], 'LIMIT', 0, budget)
for _, p in ipairs(expired) do
  local e = entry(p)
  if e then
    forget(p, e)
    removed = removed + 1
  else
    redis.call('ZREM', tag .. ':exp', p)
  end
end
if #expired == budget then more = 1 end
if max_age >= 0 and more == 0 then
  local cutoff = now - max_age
  local done = false
  while not done do
    local got = redis.call('XRANGE', log, '-', '+', 'COUNT', 128)
    if #got == 0 then break end
    for _, item in ipairs(got) do
      local f = item[2]
      local e = {}
      for i = 1, #f, 2 do e[f[i]] = f[i + 1] end
      if tonumber(e['m']) >= cutoff then
        done = true
        break
      end
      local id = item[1]
      local p = tonumber(string.sub(id, 1, string.find(id, '-', 1, true) - 1))
      forget(p, e)
      trimmed(e['t'], p)
      removed = removed + 1
      if removed >= budget then
        more = 1
        done = true
        break
      end
    end
  end
end
if ARGV[6] ~= '1' then
  redis.call('DEL', ages, due)
elseif more == 0 then
  local gone
  gone, more = sweep_due(now, budget)
  removed = removed + gone
end
if window > 0 then
  local dd = tag .. ':dd'
  local ddt = tag .. ':ddt'
  local old = redis.call('ZRANGEBYSCORE', ddt, '-inf', now - window, 'LIMIT', 0, budget)
  for _, key in ipairs(old) do redis.call('HDEL', dd, key) end
  if #old > 0 then redis.call('ZREM', ddt, unpack(old)) end
  if #old == budget then more = 1 end
end
return {removed, more}
"""
)

AGES: Final = _PROLOGUE + RETAIN + AGES_BODY  # see AGES_BODY

# ARGV: expected epoch ('' : any), new epoch, floor. Drops the shard's
# history and begins the new epoch, unless the shard's epoch is no longer the
# expected one (another node reset it first). Positions go on from
# max(last position, floor). Returns the shard's epoch afterwards.
RESET: Final = """
local meta = KEYS[1]
local tag = string.sub(meta, 1, #meta - 5)
local epoch = redis.call('HGET', meta, 'epoch')
if ARGV[1] ~= '' and epoch and epoch ~= ARGV[1] then return epoch end
local names = redis.call('ZRANGE', tag .. ':topics', 0, -1)
for _, name in ipairs(names) do redis.call('DEL', tag .. ':tp:' .. name) end
for _, k in ipairs({':log', ':off', ':trim', ':topics', ':exp', ':dd', ':ddt', ':bytes', ':age',
                   ':due'}) do
  redis.call('DEL', tag .. k)
end
local pos = tonumber(redis.call('HGET', meta, 'pos') or '0')
if tonumber(ARGV[3]) > pos then pos = tonumber(ARGV[3]) end
redis.call('HSET', meta, 'epoch', ARGV[2], 'pos', pos, 'base', pos, 'mt', 0)
return ARGV[2]
"""

# ARGV: epoch, floor, mode. Makes the shard's epoch `epoch` keeping its
# history: mode 'create' only if the shard has none (returns the epoch it
# has), 'cas:<old>' only if it is <old> or missing, 'set' always.
# Returns {epoch, status, pos, ready}: status 0 unchanged, 1 created (the
# shard had no data), 2 changed; ready 1 once the node that created the log
# (shard 0) made every shard (a shard missing after that lost its data).
ADOPT: Final = """
local meta = KEYS[1]
local epoch = redis.call('HGET', meta, 'epoch')
local mode = ARGV[3]
local status = 0
if not epoch then
  local pos = tonumber(ARGV[2])
  redis.call('HSET', meta, 'epoch', ARGV[1], 'pos', pos, 'base', pos, 'mt', 0)
  epoch = ARGV[1]
  status = 1
elseif epoch ~= ARGV[1] and (mode == 'set' or mode == 'cas:' .. epoch) then
  local pos = tonumber(redis.call('HGET', meta, 'pos') or '0')
  if tonumber(ARGV[2]) > pos then pos = tonumber(ARGV[2]) end
  redis.call('HSET', meta, 'epoch', ARGV[1], 'pos', pos, 'base', pos)
  epoch = ARGV[1]
  status = 2
end
local got = redis.call('HMGET', meta, 'pos', 'ready')
return {epoch, status, got[1] or '0', got[2] or '0'}
"""

# What a tailer checks after each read: {epoch or false, base, pos}.
TAIL_META: Final = """
return redis.call('HMGET', KEYS[1], 'epoch', 'base', 'pos')
"""

# KEYS[1] = {hb:<prefix>:r}:rv. ARGV: 4 per revocation: field, until, at,
# reason. Keeps the later until, and the later at with its reason.
REVOKE: Final = """
local rv = KEYS[1]
local function parse(v)
  local i = string.find(v, '\\n', 1, true)
  local j = string.find(v, '\\n', i + 1, true)
  return string.sub(v, 1, i - 1), string.sub(v, i + 1, j - 1), string.sub(v, j + 1)
end
for k = 1, #ARGV, 4 do
  local field, u, a, r = ARGV[k], ARGV[k + 1], ARGV[k + 2], ARGV[k + 3]
  local cur = redis.call('HGET', rv, field)
  if cur then
    local cu, ca, cr = parse(cur)
    if tonumber(cu) > tonumber(u) then u = cu end
    if tonumber(ca) > tonumber(a) then
      a = ca
      r = cr
    end
  end
  redis.call('HSET', rv, field, u .. '\\n' .. a .. '\\n' .. r)
end
return #ARGV / 4
"""

# ARGV: latest (a float repr). Returns how many were lowered.
REVOCATIONS_SHORTEN: Final = """
local rv = KEYS[1]
local all = redis.call('HGETALL', rv)
local latest = tonumber(ARGV[1])
local changed = 0
for k = 1, #all, 2 do
  local v = all[k + 1]
  local i = string.find(v, '\\n', 1, true)
  if tonumber(string.sub(v, 1, i - 1)) > latest then
    redis.call('HSET', rv, all[k], ARGV[1] .. string.sub(v, i))
    changed = changed + 1
  end
end
return changed
"""

# ARGV: now. Deletes the revocations whose until is not after it.
REVOCATIONS_SWEEP: Final = """
local rv = KEYS[1]
local all = redis.call('HGETALL', rv)
local now = tonumber(ARGV[1])
local gone = 0
for k = 1, #all, 2 do
  local v = all[k + 1]
  local i = string.find(v, '\\n', 1, true)
  if tonumber(string.sub(v, 1, i - 1)) <= now then
    redis.call('HDEL', rv, all[k])
    gone = gone + 1
  end
end
return gone
"""

# KEYS[1] = {hb:<prefix>:g}:s (group -> state). ARGV per write: group, drop
# (1/0), has state (1/0), state, fence ('' for none), number of puts, number
# of deletes, then key, value per put and key per delete. Entries of group g
# live in the hash {hb:<prefix>:g}:e:<g>. Every fence is checked before
# anything is written: {0, group...} names the writes whose fence is not their
# lease's current one (nothing written), {1} is success.
GROUPS_WRITE: Final = """
local states = KEYS[1]
local tag = string.sub(states, 1, #states - 2)
local stale = {}
local k = 1
while k <= #ARGV do
  local fence = ARGV[k + 4]
  if fence ~= '' then
    local v = redis.call('GET', tag .. ':l:' .. ARGV[k])
    local i = v and string.find(v, '\\n', 1, true)
    if not i or string.sub(v, i + 1) ~= fence then stale[#stale + 1] = ARGV[k] end
  end
  k = k + 7 + 2 * tonumber(ARGV[k + 5]) + tonumber(ARGV[k + 6])
end
if #stale > 0 then return {0, unpack(stale)} end
k = 1
while k <= #ARGV do
  local group = ARGV[k]
  local entries = tag .. ':e:' .. group
  local puts = tonumber(ARGV[k + 5])
  local deletes = tonumber(ARGV[k + 6])
  if ARGV[k + 1] == '1' then
    redis.call('HDEL', states, group)
    redis.call('DEL', entries)
  end
  if ARGV[k + 2] == '1' then redis.call('HSET', states, group, ARGV[k + 3]) end
  local at = k + 7
  if redis.call('HEXISTS', states, group) == 1 then
    for i = 0, puts - 1 do
      redis.call('HSET', entries, ARGV[at + 2 * i], ARGV[at + 2 * i + 1])
    end
    for i = 0, deletes - 1 do redis.call('HDEL', entries, ARGV[at + 2 * puts + i]) end
  end
  k = at + 2 * puts + deletes
end
return {1}
"""

# KEYS[1] = {hb:<prefix>:g}:s. ARGV: group. Returns {state, {key, value, ...}}
# or {} when there is no such group: one snapshot of one group.
GROUP_READ: Final = """
local states = KEYS[1]
local tag = string.sub(states, 1, #states - 2)
local state = redis.call('HGET', states, ARGV[1])
if not state then return {} end
return {state, redis.call('HGETALL', tag .. ':e:' .. ARGV[1])}
"""

# Returns {group, state, {key, value, ...}, ...}: one snapshot of every group.
GROUPS_READ: Final = """
local states = KEYS[1]
local tag = string.sub(states, 1, #states - 2)
local all = redis.call('HGETALL', states)
local out = {}
for k = 1, #all, 2 do
  out[#out + 1] = all[k]
  out[#out + 1] = all[k + 1]
  out[#out + 1] = redis.call('HGETALL', tag .. ':e:' .. all[k])
end
return out
"""
