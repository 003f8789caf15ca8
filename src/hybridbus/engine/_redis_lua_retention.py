"""The Lua side of the Redis engine's retention: count, size and per-topic age.

Owns: the Lua functions that `engine._redis_scripts` puts after its prologue
in the APPEND, SWEEP and AGES scripts (they use the prologue's `tag`, `log`,
`entry`, `forget` and `trimmed`), and the keys they keep, all under the
shard's hash tag `T` (one Cluster slot, so each script stays atomic there):

    T:bytes   hash  topic -> the sum of `#p` (the stored MessagePack) of its
                    retained events; absent for a topic appended to by an
                    older version: counted from its events when first needed
    T:age     hash  topic -> its age limit in seconds (rules only)
    T:due     zset  topic -> when its oldest event gets too old (its append
                    time + the age limit); a topic is in both or in neither

Must not do I/O or hold state. Which limits a topic has is decided in Python
(`engine._retention`); the scripts get them per item or per topic.

Age with rules: the log is no longer in age order across topics (documents
kept for ever sit before an hour-old log line), so the sweep does not scan
the stream from its start; it takes the topics whose deadline passed from
`T:due`, removes each one's old prefix, and moves its deadline on.
"""

from __future__ import annotations

from typing import Final

__all__ = ["AGES_BODY", "RETAIN"]

RETAIN: Final = """
local sizes = tag .. ':bytes'
local ages = tag .. ':age'
local due = tag .. ':due'
local function size_now(topic, tp)
  local s = redis.call('HGET', sizes, topic)
  if s then return tonumber(s) end
  local total = 0
  for _, p in ipairs(redis.call('ZRANGE', tp, 0, -1)) do
    local e = entry(p)
    if e then total = total + #e['p'] end
  end
  return total
end
local function trim(topic, tp, total, max_count, max_bytes)
  if max_count < 0 and (max_bytes < 0 or total <= max_bytes) then return total end
  local n = redis.call('ZCARD', tp)
  local top = 0
  -- Never the newest event: it is what the tailers read next.
  while n > 1 and ((max_count >= 0 and n > max_count) or (max_bytes >= 0 and total > max_bytes)) do
    local oldest = redis.call('ZRANGE', tp, 0, 0)
    if #oldest == 0 then break end
    local p = oldest[1]
    local e = entry(p)
    redis.call('XDEL', log, p .. '-0')
    redis.call('ZREM', tp, p)
    redis.call('ZREM', tag .. ':exp', p)
    if e then total = total - #e['p'] end
    n = n - 1
    top = tonumber(p)
  end
  if top > 0 then trimmed(topic, top) end
  return total
end
local function set_age(topic, a)
  if a < 0 then
    if redis.call('HDEL', ages, topic) == 1 then redis.call('ZREM', due, topic) end
    return
  end
  local cur = redis.call('HGET', ages, topic)
  if cur and tonumber(cur) == a then return end
  redis.call('HSET', ages, topic, a)
  local first = redis.call('ZRANGE', tag .. ':tp:' .. topic, 0, 0)
  local e = nil
  if #first > 0 then e = entry(first[1]) end
  if e then
    redis.call('ZADD', due, tonumber(e['m']) + a, topic)
  else
    redis.call('ZADD', due, 0, topic)
  end
end
local function sweep_due(now, budget)
  local removed = 0
  local names = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, budget)
  for _, topic in ipairs(names) do
    local a = tonumber(redis.call('HGET', ages, topic) or '-1')
    local tp = tag .. ':tp:' .. topic
    local young = nil
    if a >= 0 then
      local cutoff = now - a
      while removed < budget and not young do
        local ps = redis.call('ZRANGE', tp, 0, 15)
        if #ps == 0 then break end
        for _, p in ipairs(ps) do
          local e = entry(p)
          if e and tonumber(e['m']) >= cutoff then
            young = tonumber(e['m'])
            break
          end
          if e then
            forget(p, e)
            trimmed(topic, tonumber(p))
            removed = removed + 1
          else
            redis.call('ZREM', tp, p)
          end
          if removed >= budget then break end
        end
      end
    end
    if young then
      redis.call('ZADD', due, young + a, topic)
    elseif removed < budget then
      redis.call('HDEL', ages, topic)
      redis.call('ZREM', due, topic)
    end
    if removed >= budget then return removed, 1 end
  end
  if #names == budget then return removed, 1 end
  return removed, 0
end
"""

# The AGES script after the prologue and RETAIN. ARGV: epoch, then topic and
# age limit (-1: none) pairs, as the rules say (a node opening with rules sets
# every topic's, so those appended before are aged too, and a changed rule
# applies at once). Returns how many topics it was given.
AGES_BODY: Final = """
for k = 2, #ARGV, 2 do set_age(ARGV[k], tonumber(ARGV[k + 1])) end
return (#ARGV - 1) / 2
"""
