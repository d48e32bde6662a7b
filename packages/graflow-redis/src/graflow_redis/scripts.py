"""Lua scripts: every step of a message's life that touches more than one key runs atomically.

Keys (``P`` is the key prefix, ``Q`` a queue name, ``W`` a worker id)::

    P:q:Q               list   waiting messages; producers LPUSH, workers take from the right
    P:inflight:W:Q      list   messages worker W holds (BLMOVE q -> inflight, atomic)
    P:dlq:Q             list   dead letters: '<json header>\\n<original message>'
    P:workers           hash   W -> comma-separated queue names it serves
    P:hb:W              string W's heartbeat; expires when W stops beating
    P:blob:...          string shared job data (workflow graphs), with a ttl
    P:reply:...         list   replies for one producer wait, with a ttl
    P:reply:...:taken   list   replies the producer took and is handling (kept until handled)

Scripts touch keys they derive from the prefix (the reaper walks every registered worker and
sweeps the in-flight lists of unregistered ones), so graflow-redis needs a single Redis server or a
primary, not Redis Cluster.
"""

from __future__ import annotations

#: Drop the in-flight copy and push the reply, in one step. Returns 1 if the copy was still held.
#: KEYS: inflight, reply key. ARGV: message, reply ('' for none), reply ttl in ms.
ACK = """
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if ARGV[2] ~= '' then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
end
return removed
"""

#: Take up to ARGV[1] messages at once without blocking (a worker with short tasks prefetches).
#: KEYS: queue, inflight. Returns the messages, oldest first.
FETCH_MANY = """
local out = {}
for i = 1, tonumber(ARGV[1]) do
  local msg = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not msg then break end
  out[#out + 1] = msg
end
return out
"""

#: Move up to ARGV[1] more replies from a producer's reply list onto its "taken" list, where they stay
#: until the producer handled them (a reply is never only in flight on a connection that may drop).
#: KEYS: reply list, taken list. ARGV: how many, ttl of the taken list in ms. Returns the taken list.
TAKE_REPLIES = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items > 0 then
  redis.call('LTRIM', KEYS[1], #items, -1)
  redis.call('RPUSH', KEYS[2], unpack(items))
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return redis.call('LRANGE', KEYS[2], 0, -1)
"""

#: Hand an unfinished message back to the front of its queue (graceful shutdown); not a failed delivery.
#: KEYS: inflight, queue. ARGV: message.
REQUEUE = """
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if removed > 0 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
end
return removed
"""

#: Move a message to the dead-letter queue and tell its producer.
#: KEYS: inflight ('' when the message is not held), dlq, reply key.
#: ARGV: message, json header, dead reply ('' for none), reply ttl in ms.
#: Returns 1 if the message was dead-lettered, 0 if the worker no longer held it: the reaper took it
#: for dead and redelivered it meanwhile, so it is live on its queue again and its next delivery
#: answers; burying it too would leave it both dead and alive.
DEAD_LETTER = """
if KEYS[1] ~= '' then
  if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
    return 0
  end
end
redis.call('LPUSH', KEYS[2], ARGV[2] .. '\\n' .. ARGV[1])
if ARGV[3] ~= '' then
  redis.call('RPUSH', KEYS[3], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
return 1
"""

#: Register a worker and refresh its heartbeat. KEYS: workers hash, heartbeat key.
#: ARGV: worker id, queues (comma-separated), ttl in ms, unix time.
HEARTBEAT = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
return 1
"""

# Shared by REAP and REAP_ORPHAN: empty one in-flight list, putting each message back at the front
# of its queue (the end workers take from next) with one more failed delivery, or dead-lettering it
# at its max-deliveries and telling its producer why. Returns requeued, dead.
_REDELIVER = """
local function redeliver(prefix, w, q, now, ttl)
  local inflight = prefix .. ':inflight:' .. w .. ':' .. q
  local dlq = prefix .. ':dlq:' .. q
  local requeued, dead = 0, 0
  while true do
    local msg = redis.call('LPOP', inflight)
    if not msg then break end
    local id, reply, maxd, count, rest = string.match(msg, '^GF1|(%x+)|([^|]*)|(%d+)|(%d+)|(.*)$')
    if not id then
      local header = cjson.encode({id = redis.sha1hex(msg), queue = q, worker = w, at = now, deliveries = 0,
        reason = 'malformed message (not GF1|id|reply|max|count|sig|payload)'})
      redis.call('LPUSH', dlq, header .. '\\n' .. msg)
      dead = dead + 1
    else
      local failed = tonumber(count) + 1
      if failed >= tonumber(maxd) then
        local reason = 'delivered ' .. failed .. ' time(s); each time its worker stopped before answering '
          .. '(last: worker ' .. w .. '); max_deliveries is ' .. maxd
        local updated = 'GF1|' .. id .. '|' .. reply .. '|' .. maxd .. '|' .. failed .. '|' .. rest
        local header = cjson.encode({id = id, queue = q, worker = w, at = now, deliveries = failed,
          reason = reason})
        redis.call('LPUSH', dlq, header .. '\\n' .. updated)
        if reply ~= '' then
          redis.call('RPUSH', reply, 'GR1|' .. id .. '|dead||' .. reason)
          redis.call('PEXPIRE', reply, ttl)
        end
        dead = dead + 1
      else
        redis.call('RPUSH', prefix .. ':q:' .. q,
          'GF1|' .. id .. '|' .. reply .. '|' .. maxd .. '|' .. failed .. '|' .. rest)
        requeued = requeued + 1
      end
    end
  end
  return requeued, dead
end
"""

#: Redeliver the in-flight messages of dead workers (or of one named worker, dead or not).
#: A message's failed-delivery count goes up by one; at its max-deliveries it is dead-lettered and
#: its producer told why. Unparsable in-flight elements are dead-lettered as malformed.
#: KEYS: workers hash. ARGV: prefix, unix time, worker id ('' = every worker without heartbeat),
#: reply ttl in ms. Returns {redelivered, dead-lettered}.
REAP = (
    _REDELIVER
    + """
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local ttl = ARGV[4]
local workers
if ARGV[3] ~= '' then
  workers = {ARGV[3]}
else
  workers = redis.call('HKEYS', KEYS[1])
end
local requeued, dead = 0, 0
for _, w in ipairs(workers) do
  local hb = prefix .. ':hb:' .. w
  if ARGV[3] ~= '' or redis.call('EXISTS', hb) == 0 then
    local queues = redis.call('HGET', KEYS[1], w)
    if queues then
      for q in string.gmatch(queues, '[^,]+') do
        local r, d = redeliver(prefix, w, q, now, ttl)
        requeued = requeued + r
        dead = dead + d
      end
    end
    redis.call('HDEL', KEYS[1], w)
    if ARGV[3] ~= '' then
      redis.call('DEL', hb)
    end
  end
end
return {requeued, dead}
"""
)

#: The reaper's safety net for one in-flight list found by SCAN whose worker is not registered: a
#: worker that unregistered while one of its fetches was still completing, or whose registration was
#: lost. REAP only walks registered workers, so without this nothing would ever redeliver it.
#: The key is ``P:inflight:W:Q``, where W and Q may both contain ':'; the caller passes every way of
#: splitting it. The list is left alone if any reading of it names a worker that heartbeats, or a
#: registered worker serving that queue (REAP's business), or if it was written less than
#: ``min idle`` seconds ago (a fetch may be completing right now). Otherwise its messages are
#: redelivered as REAP does, to the queue of the first reading whose queue exists, else of the first
#: reading (the caller puts readings naming a queue that registered workers serve first; generated
#: worker ids contain no ':').
#: KEYS: workers hash, the in-flight list. ARGV: prefix, unix time, reply ttl in ms, min idle in
#: seconds, then pairs of worker id and queue. Returns {redelivered, dead-lettered}.
REAP_ORPHAN = (
    _REDELIVER
    + """
local prefix = ARGV[1]
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {0, 0}
end
local min_idle = tonumber(ARGV[4])
if min_idle > 0 then
  local ok, idle = pcall(redis.call, 'OBJECT', 'IDLETIME', KEYS[2])
  if ok and idle and idle < min_idle then
    return {0, 0}
  end
end
local chosen = nil
for i = 5, #ARGV - 1, 2 do
  local w, q = ARGV[i], ARGV[i + 1]
  if redis.call('EXISTS', prefix .. ':hb:' .. w) == 1 then
    return {0, 0}
  end
  local queues = redis.call('HGET', KEYS[1], w)
  if queues then
    for served in string.gmatch(queues, '[^,]+') do
      if served == q then
        return {0, 0}
      end
    end
  end
  if chosen == nil and redis.call('EXISTS', prefix .. ':q:' .. q) == 1 then
    chosen = i
  end
end
if chosen == nil then
  chosen = 5
end
local r, d = redeliver(prefix, ARGV[chosen], ARGV[chosen + 1], tonumber(ARGV[2]), ARGV[3])
return {r, d}
"""
)

#: Put a dead letter back on its queue with a fresh delivery count (``graflow dlq requeue``).
#: KEYS: dlq, queue. ARGV: the dead-letter entry, the message to queue. Returns 1 if found.
DLQ_REQUEUE = """
local removed = redis.call('LREM', KEYS[1], 1, ARGV[1])
if removed > 0 then
  redis.call('LPUSH', KEYS[2], ARGV[2])
end
return removed
"""

#: Total in-flight messages over every registered worker. KEYS: workers hash. ARGV: prefix.
IN_FLIGHT = """
local total = 0
local workers = redis.call('HGETALL', KEYS[1])
for i = 1, #workers, 2 do
  for q in string.gmatch(workers[i + 1], '[^,]+') do
    total = total + redis.call('LLEN', ARGV[1] .. ':inflight:' .. workers[i] .. ':' .. q)
  end
end
return total
"""

__all__ = [
    "ACK",
    "DEAD_LETTER",
    "DLQ_REQUEUE",
    "FETCH_MANY",
    "HEARTBEAT",
    "IN_FLIGHT",
    "REAP",
    "REAP_ORPHAN",
    "REQUEUE",
    "TAKE_REPLIES",
]
