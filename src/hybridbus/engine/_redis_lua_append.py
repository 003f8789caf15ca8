"""The Lua of the Redis engine's APPEND script, after the prologue and retention functions.

Owns: the body of the script that appends a batch of events to one shard
(`engine._redis_scripts` puts it after its prologue, which checks the epoch
and defines `tag`, `log` and `entry`, and after `engine._redis_lua_retention`'s
`RETAIN`, which defines `sizes`, `size_now`, `trim` and `set_age`). Must not
do I/O or hold state; `engine.redis` packs its arguments and reads its reply.
"""

from __future__ import annotations

from typing import Final

__all__ = ["APPEND_BODY"]

# ARGV: epoch, now, window, rules (1: keep per-topic ages), the items as one
# flat MessagePack array of 5 values per item: topic, dedupe key, dedupe
# (true/false), expiry ('': none), payload; then a MessagePack map of each
# topic of the items to {max events, max bytes, max age} (each -1: none). One
# argument each is far cheaper than 5 per item, in Redis and in redis-py
# (which encodes each argument in Python), and one flat array far cheaper for
# `cmsgpack.unpack` than an array per item.
# Returns {first new position or 0, one answer per item}: the item's offset
# (a number) when appended, at the next position (the first at `first`), or
# {position, offset, topic} of the original when a duplicate.
# Cost. Redis's own work per event is one XADD; the rest is done once per call
# (one HMGET for every dedupe check, one HSET and one ZADD for the dedupe
# window) or once per topic of the call (one HINCRBY for its offsets, one ZADD
# of its positions, its byte count, its count and size trim, its age), so a
# call of many events costs little more than their XADDs. Trimming a topic
# once after all its events keeps the same events as trimming after each (the
# newest that fit, at least one).
APPEND_BODY: Final = """
local now = ARGV[2]
local fresh_after = tonumber(now) - tonumber(ARGV[3])
local window = tonumber(ARGV[3]) > 0
local rules = ARGV[4] == '1'
local items = cmsgpack.unpack(ARGV[5])
local limits = cmsgpack.unpack(ARGV[6])
local pos = tonumber(redis.call('HGET', meta, 'pos') or '0')
local dd = tag .. ':dd'
local n = #items / 5
-- Variadic calls in slices: Lua's unpack stops at a few thousand values.
local function each(cmd, key, args)
  for c = 1, #args, 4000 do
    redis.call(cmd, key, unpack(args, c, math.min(c + 3999, #args)))
  end
end
local stored = {}
if window then
  local asked = {}
  for b = 0, 5 * n - 1, 5 do
    if items[b + 3] then asked[#asked + 1] = items[b + 2] end
  end
  for c = 1, #asked, 4000 do
    local got = redis.call('HMGET', dd, unpack(asked, c, math.min(c + 3999, #asked)))
    for j = 1, #got do
      if got[j] then stored[asked[c + j - 1]] = got[j] end
    end
  end
end
local out = {}
local fresh = {}
local batch = {}
local new = 0
local touched = {}
local count = {}
for i = 1, n do
  local b = 5 * i - 5
  local key = items[b + 2]
  local found = nil
  if window and items[b + 3] then
    found = batch[key]
    if not found then
      local p = stored[key]
      if p then
        local e = entry(p)
        if e and tonumber(e['m']) > fresh_after then
          found = {tonumber(p), tonumber(e['o']), e['t']}
        end
      end
    end
  end
  if found then
    out[i] = found
  else
    new = new + 1
    fresh[i] = true
    local topic = items[b + 1]
    local step = {pos + new, 0, topic}
    out[i] = step
    batch[key] = step
    local c = count[topic]
    if not c then
      touched[#touched + 1] = topic
      c = 0
    end
    count[topic] = c + 1
  end
end
local last = pos + new
local format = string.format
local last_s = format('%d', last)
local first = 0
if new > 0 then first = pos + 1 end
local off = tag .. ':off'
local next_offset = {}
local totals = {}
local tps = {}
local positions = {}
for _, topic in ipairs(touched) do
  local tp = tag .. ':tp:' .. topic
  tps[topic] = tp
  totals[topic] = size_now(topic, tp)
  local top = redis.call('HINCRBY', off, topic, count[topic])
  if top == count[topic] then redis.call('ZADD', tag .. ':topics', 0, topic) end
  next_offset[topic] = top - count[topic]
  positions[topic] = {}
end
local expiring = {}
local ddset = {}
local ddtimes = {}
for i = 1, n do
  if fresh[i] then
    local b = 5 * i - 5
    local step = out[i]
    local topic = items[b + 1]
    -- Numbers as strings once, with %d: Lua's own conversion formats a float each time.
    local p = format('%d', step[1])
    local payload = items[b + 5]
    local offset = next_offset[topic] + 1
    next_offset[topic] = offset
    step[2] = offset
    local offset_s = format('%d', offset)
    local x = items[b + 4]
    if x ~= '' then
      redis.call('XADD', log, p .. '-0', 't', topic, 'o', offset_s, 'm', now, 'p', payload,
                 'x', x, 'e', last_s)
      expiring[#expiring + 1] = x
      expiring[#expiring + 1] = p
    else
      redis.call('XADD', log, p .. '-0', 't', topic, 'o', offset_s, 'm', now, 'p', payload,
                 'e', last_s)
    end
    local mine = positions[topic]
    mine[#mine + 1] = p
    mine[#mine + 1] = p
    totals[topic] = totals[topic] + #payload
    if window then
      local key = items[b + 2]
      ddset[#ddset + 1] = key
      ddset[#ddset + 1] = p
      ddtimes[#ddtimes + 1] = now
      ddtimes[#ddtimes + 1] = key
    end
    out[i] = offset
  end
end
if #expiring > 0 then each('ZADD', tag .. ':exp', expiring) end
if #ddset > 0 then
  each('HSET', dd, ddset)
  each('ZADD', tag .. ':ddt', ddtimes)
end
for _, topic in ipairs(touched) do
  local tp = tps[topic]
  local limit = limits[topic]
  each('ZADD', tp, positions[topic])
  redis.call('HSET', sizes, topic, trim(topic, tp, totals[topic], limit[1], limit[2]))
  if rules then set_age(topic, limit[3]) end
end
if new > 0 then redis.call('HSET', meta, 'pos', last) end
return {first, out}
"""
