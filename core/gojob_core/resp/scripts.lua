-- gojob's server-side scripts for Valkey and Redis (one file, loaded by both store plugins).
-- Each script is the text between "--! name" markers. Every script takes the key prefix as ARGV[1]
-- (single-node servers; keys are built from it; the layout is in resp/__init__.py) and uses the
-- server's clock, so that leases and history timestamps do not depend on the nodes' clocks.
--! common
local P = ARGV[1]
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local function jstr(s)
  if s == nil or s == false or s == '' then return 'null' end
  return cjson.encode(s)
end
-- State records are collected during a script and written by flush() at its end, a few ZADDs for
-- all of them (one call per key costs far less than one per record).
local HN, HG, HI, HORDER, HHEAD = 0, {}, {}, {}, {}
local function hist(uuid, kind, state, ts, attempt, node, detail)
  -- records written by one script call keep their order: each is a microsecond after the previous
  HN = HN + 1
  ts = ts + HN * 1e-6
  local score = string.format('%.6f', ts)
  local per = HI[uuid]
  if per == nil then
    per = {}
    HI[uuid] = per
    HORDER[#HORDER + 1] = uuid
    HHEAD[uuid] = '{"uuid":' .. cjson.encode(uuid) .. ',"kind":' .. cjson.encode(kind) .. ',"state":"'
  end
  local rec = HHEAD[uuid] .. state .. '","ts":' .. score .. ',"attempt":' .. (attempt or 0) .. ',"node":' ..
    jstr(node) .. ',"detail":' .. jstr(detail) .. '}'
  HG[#HG + 1] = score
  HG[#HG + 1] = rec
  per[#per + 1] = score
  per[#per + 1] = rec
end
local function zadd_all(key, pairs_)
  for i = 1, #pairs_, 1000 do
    redis.call('ZADD', key, unpack(pairs_, i, math.min(i + 999, #pairs_)))
  end
end
local function flush()
  if #HG > 0 then
    zadd_all(P .. 'hist', HG)
    for _, uuid in ipairs(HORDER) do zadd_all(P .. 'hist:i:' .. uuid, HI[uuid]) end
    HG, HI, HORDER, HHEAD = {}, {}, {}, {}
  end
end
local function ready_member(ready_ts, seq, uuid)
  return string.format('%017.0f', math.floor(ready_ts * 1e6)) .. ':' .. string.format('%015.0f', seq) .. ':' .. uuid
end
-- put a SCHEDULED instance in the ready set (due) or the delayed set (later); takes a new FIFO seq.
-- Notes why waiting nodes must hear of it: WAKE_READY when the ready set was empty (claimers may be
-- waiting; moot if a handoff then took everything), WAKE_DELAYED when the instance is now the first
-- delayed one (claimers wait until the old first).
local WAKE_READY, WAKE_DELAYED = false, false
local function place(prio, ready_ts, seq, uuid, t)
  if ready_ts <= t then
    if not WAKE_READY and redis.call('ZCARD', P .. 'ready') == 0 then WAKE_READY = true end
    redis.call('ZADD', P .. 'ready', prio, ready_member(ready_ts, seq, uuid))
  else
    local head = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')
    if #head == 0 or tonumber(head[2]) > ready_ts then WAKE_DELAYED = true end
    redis.call('ZADD', P .. 'delayed', ready_ts, uuid)
  end
end
local function push(key, uuid, t)
  local f = redis.call('HMGET', key, 'priority', 'ready_ts', 'kind')
  redis.call('HINCRBY', P .. 'queued', f[3], 1)
  redis.call('ZADD', P .. 'waiting:' .. f[3], f[2], uuid)
  local seq = redis.call('INCR', P .. 'seq')
  redis.call('HSET', key, 'seq', seq)
  place(tonumber(f[1]), tonumber(f[2]), seq, uuid, t)
end
-- the message is the server time: a node whose claim emptied the ready set after it knows the
-- wake-up is old news
local function wake(t)
  if WAKE_DELAYED or (WAKE_READY and redis.call('ZCARD', P .. 'ready') > 0) then
    redis.call('PUBLISH', P .. 'wake', string.format('%.6f', t))
  end
end
-- an instance leaves the queue (claimed, canceled, cleared): counters and the per-kind index follow
local function unqueue(kind, uuid)
  redis.call('HINCRBY', P .. 'queued', kind, -1)
  redis.call('ZREM', P .. 'waiting:' .. kind, uuid)
end

-- move due delayed instances to the ready set, then take up to `limit` ready ones for `node`;
-- appends their hashes to `out`, sets out[2] to when the next delayed instance is due ('' if none)
-- and out[1] as said at its end
local function claim_into(out, node, limit, lease, t)
  local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', t, 'LIMIT', 0, 1000)
  for _, uuid in ipairs(due) do
    redis.call('ZREM', P .. 'delayed', uuid)
    local key = P .. 'inst:' .. uuid
    local f = redis.call('HMGET', key, 'state', 'priority', 'ready_ts', 'seq')
    if f[1] == 'SCHEDULED' then
      redis.call('ZADD', P .. 'ready', tonumber(f[2]), ready_member(tonumber(f[3]), tonumber(f[4]), uuid))
    end
  end
  local taken = 0
  while taken < limit do
    local popped = redis.call('ZPOPMIN', P .. 'ready', limit - taken)
    if #popped == 0 then break end
    for j = 1, #popped, 2 do
      local member = popped[j]
      local uuid = string.sub(member, 35)
      local key = P .. 'inst:' .. uuid
      local f = redis.call('HMGET', key, 'state', 'seq', 'kind')
      if f[1] == 'SCHEDULED' and string.format('%015.0f', tonumber(f[2])) == string.sub(member, 19, 33) then
        unqueue(f[3], uuid)
        local attempts = redis.call('HINCRBY', key, 'attempts', 1)
        redis.call('HSET', key, 'state', 'PROCESSING', 'started_ts', string.format('%.6f', t), 'node', node,
                   'lease_ts', string.format('%.6f', t + lease))
        redis.call('ZADD', P .. 'running', t + lease, uuid)
        hist(uuid, f[3], 'PROCESSING', t, attempts, node, nil)
        out[#out + 1] = redis.call('HGETALL', key)
        taken = taken + 1
      end
    end
  end
  local head = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')
  if #head > 0 then out[2] = head[2] end
  -- out[1]: the server time if the ready set is now empty (wake-ups published before are old
  -- news to this node), else 0
  if redis.call('ZCARD', P .. 'ready') == 0 then out[1] = string.format('%.6f', t) else out[1] = 0 end
end

-- The registrations of nodes waiting for work (see the idle script): {node, free slots, lease, deadline}
-- each. One past its deadline (its node went away) is dropped.
local function registrations(t)
  local regs = {}
  local idle = redis.call('HGETALL', P .. 'idle')
  for j = 1, #idle, 2 do
    local limit, lease, deadline = string.match(idle[j + 1], '^(%S+) (%S+) (%S+)$')
    limit, lease, deadline = tonumber(limit), tonumber(lease), tonumber(deadline)
    if deadline == nil or deadline < t or limit == nil then
      redis.call('HDEL', P .. 'idle', idle[j])
    else
      regs[#regs + 1] = {idle[j], limit, lease, deadline}
    end
  end
  return regs
end
-- Send a waiting node the hashes of instances claimed for it; reg[2] already counts them out.
local function deliver(reg, hashes)
  redis.call('HINCRBY', P .. 'handed', reg[1], #hashes)
  if reg[2] <= 0 then
    redis.call('HDEL', P .. 'idle', reg[1])
  else
    redis.call('HSET', P .. 'idle', reg[1], string.format('%d %.6f %.6f', reg[2], reg[3], reg[4]))
  end
  redis.call('PUBLISH', P .. 'node:' .. reg[1], cjson.encode(hashes))
end

-- Hand ready instances straight to nodes waiting for work: the claim is made here and the instances
-- travel in the message to the node, which starts them with no further round trip. `regs`: the
-- registrations if the caller read them already.
local function handoff(t, regs)
  if redis.call('ZCARD', P .. 'ready') == 0 then return end
  for _, reg in ipairs(regs or registrations(t)) do
    if reg[2] > 0 then
      local got = {t, ''}
      claim_into(got, reg[1], reg[2], reg[3], t)
      if #got > 2 then
        local hashes = {}
        for k = 3, #got do hashes[#hashes + 1] = got[k] end
        reg[2] = reg[2] - #hashes
        deliver(reg, hashes)
      end
      if redis.call('ZCARD', P .. 'ready') == 0 then return end
    end
  end
end

--! idle
-- ARGV: prefix, node, limit, lease, wait, received ->
--   {drained_ts, next_due_or_'', pending, registered, hgetall...}
-- Closes the node's registration if one is open (`received` >= 0: how many instances the node got
-- through it; `pending` = handed but not yet received, which the node still reads from its channel),
-- then claims like `claim`. If that left the ready set empty, the slots still free (`registered`)
-- are registered as waiting (for `wait` seconds and a grace second), so that enqueues hand the node
-- instances directly.
local node, limit, lease, wait, received = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6])
local t = now()
local pending = 0
if received >= 0 then
  pending = math.max(0, tonumber(redis.call('HGET', P .. 'handed', node) or 0) - received)
end
redis.call('HDEL', P .. 'idle', node)
redis.call('HDEL', P .. 'handed', node)
local out = {t, '', pending, 0}
claim_into(out, node, math.max(0, limit - pending), lease, t)
local left = limit - pending - (#out - 4)
if left > 0 and out[1] ~= 0 then
  redis.call('HSET', P .. 'idle', node, left .. ' ' .. string.format('%.6f', lease) .. ' ' ..
             string.format('%.6f', t + wait + 1))
  out[4] = left
end
flush()
return out

--! unidle
-- ARGV: prefix, node -> how many instances were handed to the node while it was registered
redis.call('HDEL', P .. 'idle', ARGV[2])
local n = redis.call('HGET', P .. 'handed', ARGV[2])
redis.call('HDEL', P .. 'handed', ARGV[2])
return tonumber(n or 0)

--! enqueue
-- ARGV: prefix, node, chained ('1'/'0'), n, then n times: uuid, kind, priority, ready_ts, schedule_id,
-- created_ts, max_retries, d (the record's fixed part as JSON: arguments, timeout, cron, created)
-- An instance that is due while nothing else is ready (or delayed and due) goes straight to a node
-- waiting for work: claimed here, without passing through the ready set and its indexes, and sent in
-- the node's message. The others are queued, and handoff() serves waiting nodes from the queue.
local node, chained, n = ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
local t = now()
local out = {}
local i = 5
local direct = nil  -- registrations of waiting nodes, read on first use
local sent = {}     -- node -> hashes handed to it directly
local function waiting_node()
  if direct == nil then direct = registrations(t) end
  for _, reg in ipairs(direct) do
    if reg[2] > 0 then return reg end
  end
  return nil
end
for k = 1, n do
  local uuid, kind, prio, ready, sid, created, retries, d =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  i = i + 8
  local key = P .. 'inst:' .. uuid
  if redis.call('EXISTS', key) == 1 or (chained and sid ~= '' and redis.call('SISMEMBER', P .. 'sched:canceled', sid) == 1) then
    out[k] = 0
  else
    local h = {'uuid', uuid, 'd', d, 'kind', kind, 'priority', prio, 'ready_ts', ready, 'max_retries', retries}
    if sid ~= '' then
      if not chained then redis.call('SREM', P .. 'sched:canceled', sid) end
      redis.call('SADD', P .. 'sched:' .. sid, uuid)
      h[#h + 1] = 'schedule_id'
      h[#h + 1] = sid
    end
    redis.call('ZADD', P .. 'all', created, uuid)
    hist(uuid, kind, 'CREATED', t, 0, node, nil)
    hist(uuid, kind, 'SCHEDULED', t, 0, node, nil)
    local ready_ts = tonumber(ready)
    local reg = nil
    if ready_ts <= t and redis.call('ZCARD', P .. 'ready') == 0 then
      local head = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')
      if #head == 0 or tonumber(head[2]) > t then reg = waiting_node() end
    end
    if reg ~= nil then
      local to, lease = reg[1], reg[3]
      h[#h + 1] = 'state'; h[#h + 1] = 'PROCESSING'
      h[#h + 1] = 'attempts'; h[#h + 1] = '1'
      h[#h + 1] = 'started_ts'; h[#h + 1] = string.format('%.6f', t)
      h[#h + 1] = 'node'; h[#h + 1] = to
      h[#h + 1] = 'lease_ts'; h[#h + 1] = string.format('%.6f', t + lease)
      redis.call('HSET', key, unpack(h))
      redis.call('ZADD', P .. 'running', t + lease, uuid)
      hist(uuid, kind, 'PROCESSING', t, 1, to, nil)
      reg[2] = reg[2] - 1
      local list = sent[to]
      if list == nil then
        list = {}
        sent[to] = list
      end
      list[#list + 1] = h
    else
      local seq = redis.call('INCR', P .. 'seq')  -- FIFO order among the queued (a handed one needs none)
      h[#h + 1] = 'seq'; h[#h + 1] = tostring(seq)
      h[#h + 1] = 'state'; h[#h + 1] = 'SCHEDULED'
      redis.call('HSET', key, unpack(h))
      redis.call('HINCRBY', P .. 'queued', kind, 1)
      redis.call('ZADD', P .. 'waiting:' .. kind, ready, uuid)
      place(tonumber(prio), ready_ts, seq, uuid, t)
    end
    out[k] = 1
  end
end
if direct ~= nil then
  for _, reg in ipairs(direct) do
    if sent[reg[1]] ~= nil then deliver(reg, sent[reg[1]]) end
  end
end
if WAKE_READY then handoff(t, direct) end
wake(t)
flush()
return out

--! claim
-- ARGV: prefix, node, limit, lease -> {drained_ts, next_due_or_'', {hgetall...}, ...}
local t = now()
local out = {t, ''}
claim_into(out, ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), t)
flush()
return out

--! extend
-- ARGV: prefix, node, lease, uuids... -> {lost..., '|', cancel_requested...}
local node, lease = ARGV[2], tonumber(ARGV[3])
local t = now()
local lost, cancel = {}, {}
for i = 4, #ARGV do
  local uuid = ARGV[i]
  local key = P .. 'inst:' .. uuid
  local f = redis.call('HMGET', key, 'state', 'node', 'cancel')
  if f[1] ~= 'PROCESSING' or f[2] ~= node then
    lost[#lost + 1] = uuid
  else
    redis.call('HSET', key, 'lease_ts', string.format('%.6f', t + lease))
    redis.call('ZADD', P .. 'running', t + lease, uuid)
    if f[3] == '1' then cancel[#cancel + 1] = uuid end
  end
end
local out = lost
out[#out + 1] = '|'
for _, u in ipairs(cancel) do out[#out + 1] = u end
return out

--! reclaim
-- ARGV: prefix, node -> uuids re-queued
local node = ARGV[2]
local t = now()
local expired = redis.call('ZRANGEBYSCORE', P .. 'running', '-inf', t, 'LIMIT', 0, 500)
local out = {}
for _, uuid in ipairs(expired) do
  redis.call('ZREM', P .. 'running', uuid)
  local key = P .. 'inst:' .. uuid
  local f = redis.call('HMGET', key, 'state', 'node', 'cancel', 'kind', 'attempts')
  if f[1] == 'PROCESSING' then
    redis.call('HDEL', key, 'lease_ts')
    if f[3] == '1' then
      redis.call('HSET', key, 'state', 'CANCELED', 'finished_ts', string.format('%.6f', t))
      hist(uuid, f[4], 'CANCELED', t, tonumber(f[5]), node, 'canceled; node ' .. (f[2] or '?') .. ' lost its lease')
    else
      redis.call('HSET', key, 'state', 'SCHEDULED')
      redis.call('HINCRBY', key, 'abandoned', 1)
      hist(uuid, f[4], 'SCHEDULED', t, tonumber(f[5]), node,
           'attempt ' .. f[5] .. ' abandoned: node ' .. (f[2] or '?') .. ' lost its lease; re-queued')
      push(key, uuid, t)
      out[#out + 1] = uuid
    end
  end
end
wake(t)
flush()
return out

--! finish
-- ARGV: prefix, node, limit, lease, n, then n times: uuid, state, result_json ('' = none), error,
-- retry_at ('' = none), detail -> {n oks..., drained_ts, next_due_or_'', hgetall of up to `limit` newly claimed...}
-- Finishing and claiming the next instances in one call is where a busy node saves round trips.
local node, limit, lease, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local t = now()
local out, requeued = {}, false
local i = 6
for k = 1, n do
  local uuid, state, result, err, retry_at, detail = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5]
  i = i + 6
  local key = P .. 'inst:' .. uuid
  local f = redis.call('HMGET', key, 'state', 'node', 'cancel', 'kind', 'attempts', 'max_retries', 'abandoned')
  if f[1] ~= 'PROCESSING' or f[2] ~= node then
    out[k] = 0
  else
    redis.call('ZREM', P .. 'running', uuid)
    redis.call('HDEL', key, 'lease_ts')
    local attempts = tonumber(f[5])
    local d = err
    if d == '' then d = detail end
    hist(uuid, f[4], state, t, attempts, node, d)
    if retry_at ~= '' and f[3] ~= '1' then
      redis.call('HSET', key, 'state', 'SCHEDULED', 'ready_ts', retry_at, 'error', err)
      -- abandoned attempts (their node died) are not failures: the retry count leaves them out
      local failed = attempts - (tonumber(f[7]) or 0)
      hist(uuid, f[4], 'SCHEDULED', t, attempts, node, 'retry ' .. failed .. ' of ' .. (f[6] or '0') ..
           ' in ' .. string.format('%.3f', math.max(0, tonumber(retry_at) - t)) .. ' s')
      push(key, uuid, t)
      requeued = true
    else
      if retry_at ~= '' then
        state = 'CANCELED'
        hist(uuid, f[4], 'CANCELED', t, attempts, node, 'canceled')
      end
      redis.call('HSET', key, 'state', state, 'finished_ts', string.format('%.6f', t), 'error', err)
      if result ~= '' then redis.call('HSET', key, 'result', result) end
    end
    out[k] = 1
  end
end
wake(t)
local claimed = {0, ''}
if limit > 0 then claim_into(claimed, node, limit, lease, t) end
out[#out + 1] = claimed[1]
out[#out + 1] = claimed[2]
for j = 3, #claimed do out[#out + 1] = claimed[j] end
flush()
return out

--! release
-- ARGV: prefix, node, uuids...
local node = ARGV[2]
local t = now()
for i = 3, #ARGV do
  local uuid = ARGV[i]
  local key = P .. 'inst:' .. uuid
  local f = redis.call('HMGET', key, 'state', 'node', 'kind', 'attempts')
  if f[1] == 'PROCESSING' and f[2] == node then
    redis.call('ZREM', P .. 'running', uuid)
    redis.call('HDEL', key, 'lease_ts')
    local a = math.max(0, tonumber(f[4]) - 1)
    redis.call('HSET', key, 'state', 'SCHEDULED', 'attempts', a)
    hist(uuid, f[3], 'SCHEDULED', t, a, node, 'released by node ' .. node)
    push(key, uuid, t)
  end
end
wake(t)
flush()
return 1

--! cancel
-- ARGV: prefix, uuid, node -> hgetall of the instance after the change, or {} if none
local uuid, node = ARGV[2], ARGV[3]
local key = P .. 'inst:' .. uuid
if redis.call('EXISTS', key) == 0 then return {} end
local t = now()
local sid = redis.call('HGET', key, 'schedule_id')
local targets = {uuid}
if sid and sid ~= '' then
  redis.call('SADD', P .. 'sched:canceled', sid)
  targets = redis.call('SMEMBERS', P .. 'sched:' .. sid)
end
for _, u in ipairs(targets) do
  local k = P .. 'inst:' .. u
  local f = redis.call('HMGET', k, 'state', 'cancel', 'kind', 'attempts', 'ready_ts', 'seq')
  if f[1] == 'SCHEDULED' or f[1] == 'CREATED' then
    redis.call('HSET', k, 'state', 'CANCELED', 'finished_ts', string.format('%.6f', t))
    redis.call('ZREM', P .. 'delayed', u)
    redis.call('ZREM', P .. 'ready', ready_member(tonumber(f[5]), tonumber(f[6]), u))
    unqueue(f[3], u)
    hist(u, f[3], 'CANCELED', t, tonumber(f[4]), node, 'canceled before it ran')
  elseif f[1] == 'PROCESSING' and f[2] ~= '1' then
    redis.call('HSET', k, 'cancel', 1)
    redis.call('PUBLISH', P .. 'cancel', u)
  end
end
flush()
return redis.call('HGETALL', key)

--! clear
-- ARGV: prefix, uuids... -> how many removed (running ones are kept)
local n = 0
for i = 2, #ARGV do
  local uuid = ARGV[i]
  local key = P .. 'inst:' .. uuid
  local f = redis.call('HMGET', key, 'state', 'schedule_id', 'kind')
  if f[1] and f[1] ~= 'PROCESSING' then
    if f[1] == 'SCHEDULED' then unqueue(f[3], uuid) end
    redis.call('DEL', key)
    redis.call('ZREM', P .. 'all', uuid)
    redis.call('ZREM', P .. 'delayed', uuid)
    if f[2] and f[2] ~= '' then redis.call('SREM', P .. 'sched:' .. f[2], uuid) end
    n = n + 1
  end
end
return n

--! aside
-- ARGV: prefix, uuids... : instances a node claimed but could not decode leave the running index (so
-- no lease expiry brings them back); their hashes stay as they are, reported in the corrupt set
for i = 2, #ARGV do redis.call('ZREM', P .. 'running', ARGV[i]) end
return 1
